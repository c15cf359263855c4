"""Tests of blockbuster.io: opening zarr, OME-Zarr and TIFF inputs lazily."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import shutil
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import tifffile
import zarr

from blockbuster.errors import InputError, InvalidParameterError, UnsupportedLocationError
from blockbuster.io import ArraySource, describe, open_path

AXES_CZYX = [
    {"name": "c", "type": "channel"},
    {"name": "z", "type": "space", "unit": "micrometer"},
    {"name": "y", "type": "space", "unit": "micrometer"},
    {"name": "x", "type": "space", "unit": "micrometer"},
]


def make_ome(
    path,
    data: np.ndarray,
    axes: list[dict],
    version: str,
    n_levels: int = 3,
    chunks=None,
    pixel=(2.0, 0.5, 0.5),
) -> list[np.ndarray]:
    """Write an OME-Zarr image (NGFF 0.4 on zarr v2, 0.5 on zarr v3); y/x halved per level.

    Returns the level arrays written.
    """
    fmt = 2 if version == "0.4" else 3
    g = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    names = [a["name"] for a in axes]
    halve = [a["name"] in ("y", "x") for a in axes]
    levels, datasets = [], []
    lvl = data
    for i in range(n_levels):
        kw = (
            {"chunk_key_encoding": {"name": "v2", "separator": "/"}}
            if fmt == 2
            else {"dimension_names": names}
        )
        ch = chunks or tuple(1 if a.get("type") == "channel" else 16 for a in axes)
        arr = g.create_array(
            str(i),
            shape=lvl.shape,
            dtype=lvl.dtype,
            chunks=tuple(min(c, s) for c, s in zip(ch, lvl.shape)),
            **kw,
        )
        arr[...] = lvl
        levels.append(lvl)
        sp = iter(pixel)
        scale = [
            1.0 if a.get("type") == "channel" else next(sp) * (2**i if h else 1)
            for a, h in zip(axes, halve)
        ]
        datasets.append(
            {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": scale}]}
        )
        lvl = lvl[tuple(slice(None, None, 2) if h else slice(None) for h in halve)]
    ms = {"name": "img", "axes": axes, "datasets": datasets}
    if version == "0.4":
        ms["version"] = "0.4"
        g.attrs["multiscales"] = [ms]
    else:
        g.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    return levels


@pytest.fixture
def data4d():
    rng = np.random.default_rng(0)
    return rng.integers(0, 60000, size=(2, 5, 40, 36), dtype=np.uint16)


# ----------------------------------------------------------------------------- OME-Zarr
@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_levels_axes_scale(tmp_path, data4d, version):
    img = tmp_path / "img.zarr"
    levels = make_ome(img, data4d, AXES_CZYX, version)
    src = open_path(img)
    assert src.kind == "ome-zarr" and src.ngff_version == version
    assert src.zarr_format == (2 if version == "0.4" else 3)
    assert src.shape == data4d.shape and src.dtype == np.uint16
    assert src.chunks == (1, 5, 16, 16)
    assert src.channel_axis == 0
    assert src.axis_names == ("c", "z", "y", "x")
    assert [a["name"] for a in src.axes] == ["c", "z", "y", "x"]
    assert src.scale == [1.0, 2.0, 0.5, 0.5]
    assert src.levels == [(2, 5, 40, 36), (2, 5, 20, 18), (2, 5, 10, 9)]
    assert src.level == 0
    sl = (slice(None), slice(1, 4), slice(3, 30), slice(10, 36))
    np.testing.assert_array_equal(src.read(sl), data4d[sl])
    np.testing.assert_array_equal(src.read_level(2), levels[2])
    np.testing.assert_array_equal(src.read_level(-1, (0, slice(0, 2))), levels[2][0, :2])

    s1 = open_path(img, level=1)
    assert s1.shape == (2, 5, 20, 18) and s1.level == 1 and s1.scale == [1.0, 2.0, 1.0, 1.0]
    np.testing.assert_array_equal(s1.read((slice(None),) * 4), levels[1])
    assert open_path(img, level=-1).level == 2

    with pytest.raises(InvalidParameterError, match=r"level=3 .*available levels") as e:
        open_path(img, level=3)
    assert "(2, 5, 10, 9)" in str(e.value)
    with pytest.raises(InvalidParameterError, match="level"):
        src.read_level(7)


def test_ome_zarr_05_cyx_and_describe(tmp_path):
    data = np.arange(3 * 32 * 24, dtype=np.uint8).reshape(3, 32, 24)
    axes = [
        {"name": "c", "type": "channel"},
        {"name": "y", "type": "space"},
        {"name": "x", "type": "space"},
    ]
    make_ome(tmp_path / "im.zarr", data, axes, "0.5", n_levels=2, pixel=(0.25, 0.25))
    src = open_path(tmp_path / "im.zarr")
    assert src.channel_axis == 0 and src.levels == [(3, 32, 24), (3, 16, 12)]
    assert src.scale == [1.0, 0.25, 0.25]
    d = describe(src)
    assert d.startswith("OME-Zarr 0.5 image ") and "level 0 of 2" in d
    assert "shape (3, 32, 24) cyx uint8" in d and "chunks (1, 16, 16)" in d
    assert "\n" not in d


def test_ome_zarr_global_transform_and_no_channel(tmp_path):
    data = np.ones((20, 20), np.uint16)
    axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    make_ome(tmp_path / "a.zarr", data, axes, "0.4", n_levels=2, pixel=(1.0, 1.0))
    g = zarr.open_group(tmp_path / "a.zarr", mode="r+")
    ms = g.attrs["multiscales"]
    ms[0]["coordinateTransformations"] = [{"type": "scale", "scale": [3.0, 3.0]}]
    g.attrs["multiscales"] = ms
    src = open_path(tmp_path / "a.zarr", level=1)
    assert src.channel_axis is None and src.scale == [6.0, 6.0]


def test_level_array_inside_image_and_bioformats2raw(tmp_path, data4d):
    img = tmp_path / "img.zarr"
    make_ome(img, data4d, AXES_CZYX, "0.4")
    s = open_path(img / "1")
    assert s.kind == "ome-zarr" and s.level == 1 and s.channel_axis == 0
    assert s.path == os.path.realpath(img)
    with pytest.raises(InvalidParameterError, match="level=2"):
        open_path(img / "1", level=2)

    root = tmp_path / "bf.ome.zarr"
    g = zarr.open_group(root, mode="w", zarr_format=2)
    g.attrs["bioformats2raw.layout"] = 3
    make_ome(root / "0", data4d, AXES_CZYX, "0.4")
    s = open_path(root)
    assert s.kind == "ome-zarr" and s.component == "0" and s.shape == data4d.shape
    np.testing.assert_array_equal(s.read((0, 0)), data4d[0, 0])
    assert open_path(root, component="0", level=2).shape == (2, 5, 10, 9)


def test_identity_changes_when_rewritten(tmp_path, data4d):
    img = tmp_path / "img.zarr"
    make_ome(img, data4d, AXES_CZYX, "0.5")
    src = open_path(img)
    ident = src.identity()
    assert ident == open_path(img).identity()  # stable
    assert ident["path"] == os.path.realpath(img) and ident["level"] == 0
    assert ident["shape"] == list(data4d.shape) and ident["dtype"] == "uint16"
    assert isinstance(ident["mtime_ns"], int)
    assert open_path(img, level=1).identity() != ident
    # a chunk rewritten in place through zarr (metadata untouched) is seen
    time.sleep(0.02)
    level0 = zarr.open_array(str(img / "0"), mode="r+")
    level0[0, 0, 0, 0] = level0[0, 0, 0, 0] + 1
    assert open_path(img).identity() != ident
    ident = open_path(img).identity()
    time.sleep(0.02)
    shutil.rmtree(img)
    make_ome(img, data4d, AXES_CZYX, "0.5")
    assert open_path(img).identity() != ident
    assert src.identity() != ident  # recomputed at each call


def test_identity_tiff_changes(tmp_path):
    p = tmp_path / "a.tif"
    tifffile.imwrite(p, np.zeros((32, 32), np.uint8))
    ident = open_path(p).identity()
    assert ident["size"] == os.path.getsize(p)
    time.sleep(0.02)
    tifffile.imwrite(p, np.ones((32, 32), np.uint8))
    assert open_path(p).identity() != ident


# ------------------------------------------------------------- pickling and processes
def _read_in_child(src: ArraySource):
    return src.read((slice(None), 1, slice(0, 8), slice(0, 8))), os.getpid()


def test_pickle_is_small_and_reopens_in_other_processes(tmp_path, data4d):
    img = tmp_path / "img.zarr"
    make_ome(img, data4d, AXES_CZYX, "0.4")
    src = open_path(img)
    src.read((0, 0, slice(0, 2)))  # populate this process's cache
    blob = pickle.dumps(src)
    assert len(blob) < 2000
    assert "zarr.core" not in str(blob)
    back = pickle.loads(blob)
    assert back == src and back.identity() == src.identity()
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as ex:
        results = list(ex.map(_read_in_child, [src] * 4))
    for arr, pid in results:
        assert pid != os.getpid()
        np.testing.assert_array_equal(arr, data4d[:, 1, :8, :8])


def test_tiff_source_pickles_and_reads_in_child(tmp_path):
    p = tmp_path / "t.tif"
    data = np.random.default_rng(1).integers(0, 255, (2, 5, 40, 36), dtype=np.uint8)
    tifffile.imwrite(p, data, tile=(16, 16), metadata={"axes": "CZYX"})
    src = open_path(p)
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as ex:
        arr, _ = ex.submit(_read_in_child, src).result()
    np.testing.assert_array_equal(arr, data[:, 1, :8, :8])


def test_dask_from_array(tmp_path, data4d):
    da = pytest.importorskip("dask.array")
    from dask.base import tokenize

    img = tmp_path / "img.zarr"
    make_ome(img, data4d, AXES_CZYX, "0.5")
    src = open_path(img)
    x = da.from_array(src, chunks=src.chunks)
    assert x.shape == data4d.shape
    np.testing.assert_array_equal(x[:, 2:4, 5:30].compute(), data4d[:, 2:4, 5:30])
    assert tokenize(src) == tokenize(open_path(img))
    assert tokenize(src) != tokenize(open_path(img, level=1))


# -------------------------------------------------------------------------------- TIFF
def test_tiff_tiled_reads_same_pixels(tmp_path):
    data = np.random.default_rng(2).integers(0, 4000, (3, 70, 90), dtype=np.uint16)
    p = tmp_path / "img.tif"
    tifffile.imwrite(p, data, tile=(32, 32), photometric="minisblack", metadata={"axes": "CYX"})
    src = open_path(p)
    assert src.kind == "tiff" and src.shape == data.shape and src.dtype == np.uint16
    assert src.chunks == (1, 32, 32) and src.channel_axis == 0
    assert src.axis_names == ("c", "y", "x") and src.levels == [data.shape]
    for sl in [
        (slice(None), slice(0, 70), slice(0, 90)),
        (slice(1, 3), slice(17, 55), slice(31, 89)),
        (2, slice(5, 6)),
    ]:
        np.testing.assert_array_equal(src.read(sl), data[sl])
    assert describe(src).startswith("TIFF ")


def test_tiff_striped_2d(tmp_path):
    data = np.arange(50 * 30, dtype=np.float32).reshape(50, 30)
    p = tmp_path / "s.tiff"
    tifffile.imwrite(p, data, rowsperstrip=8)
    src = open_path(p)
    assert src.chunks == (8, 30) and src.channel_axis is None
    np.testing.assert_array_equal(src.read((slice(3, 41), slice(2, 29))), data[3:41, 2:29])


def test_pyramidal_ome_tiff(tmp_path):
    data = np.random.default_rng(3).integers(0, 255, (2, 64, 80), dtype=np.uint8)
    p = tmp_path / "pyr.ome.tif"
    opts = dict(tile=(16, 16), photometric="minisblack")
    with tifffile.TiffWriter(p) as tw:
        tw.write(
            data,
            subifds=2,
            metadata={"axes": "CYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.3},
            **opts,
        )
        tw.write(data[:, ::2, ::2], subfiletype=1, **opts)
        tw.write(data[:, ::4, ::4], subfiletype=1, **opts)
    src = open_path(p)
    assert src.levels == [(2, 64, 80), (2, 32, 40), (2, 16, 20)]
    assert src.channel_axis == 0
    assert src.scale == pytest.approx([1.0, 0.3, 0.3])
    np.testing.assert_array_equal(src.read_level(2), data[:, ::4, ::4])
    s1 = open_path(p, level=1)
    assert s1.shape == (2, 32, 40) and s1.scale == pytest.approx([1.0, 0.6, 0.6])
    np.testing.assert_array_equal(s1.read((1, slice(3, 20))), data[1, ::2, ::2][3:20])
    assert describe(src).startswith("OME-TIFF ") and "level 0 of 3" in describe(src)
    with pytest.raises(InvalidParameterError, match="level=3"):
        open_path(p, level=3)


def test_rgb_tiff_channel_axis_is_samples(tmp_path):
    data = np.random.default_rng(4).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    p = tmp_path / "rgb.tif"
    tifffile.imwrite(p, data, photometric="rgb", tile=(16, 16))
    src = open_path(p)
    assert src.shape == (24, 32, 3) and src.channel_axis == 2
    np.testing.assert_array_equal(src.read((slice(None),) * 3), data)


# ------------------------------------------------------------------------- plain zarr
@pytest.mark.parametrize("fmt", [2, 3])
def test_plain_zarr_arrays(tmp_path, fmt):
    data = np.random.default_rng(5).integers(0, 9, (30, 41), dtype=np.int32)
    p = tmp_path / "a.zarr"
    z = zarr.create_array(p, shape=data.shape, chunks=(8, 16), dtype=data.dtype, zarr_format=fmt)
    z[...] = data
    src = open_path(str(p))
    assert src.kind == "zarr" and src.zarr_format == fmt
    assert src.shape == (30, 41) and src.chunks == (8, 16) and src.dtype == np.int32
    assert src.levels == [(30, 41)] and src.channel_axis is None and src.axes is None
    np.testing.assert_array_equal(src.read((slice(5, 29), slice(1, 40))), data[5:29, 1:40])
    assert describe(src).startswith(f"zarr v{fmt} array ")
    with pytest.raises(InvalidParameterError, match="level=1"):
        open_path(p, level=1)


def test_zarr_v3_dimension_names_give_channel_axis(tmp_path):
    p = tmp_path / "c.zarr"
    zarr.create_array(
        p, shape=(10, 10, 3), chunks=(5, 5, 3), dtype="u1", dimension_names=["y", "x", "c"]
    )
    assert open_path(p).channel_axis == 2


def test_group_with_component(tmp_path):
    data = np.arange(60, dtype=np.uint16).reshape(6, 10)
    g = zarr.open_group(tmp_path / "g.zarr", mode="w")
    g.create_group("raw").create_array("data", shape=data.shape, chunks=(3, 5), dtype=data.dtype)[
        ...
    ] = data
    src = open_path(tmp_path / "g.zarr", component="raw/data")
    assert src.component == "raw/data" and src.shape == (6, 10)
    np.testing.assert_array_equal(src.read((slice(None), slice(2, 7))), data[:, 2:7])
    assert "component 'raw/data'" in describe(src)
    with pytest.raises(InputError, match=r"zarr group.*component.*'raw'"):
        open_path(tmp_path / "g.zarr")
    with pytest.raises(InputError, match="component 'nope' does not exist"):
        open_path(tmp_path / "g.zarr", component="nope")


# -------------------------------------------------------------------------- bad inputs
def test_bad_paths_raise_input_error(tmp_path):
    missing = tmp_path / "missing.zarr"
    with pytest.raises(InputError) as e:
        open_path(missing)
    assert str(missing) in str(e.value) and "\n" not in str(e.value)
    assert "OME-Zarr" in str(e.value) and "TIFF" in str(e.value)
    assert isinstance(e.value, FileNotFoundError)  # the builtin a Python user catches

    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(InputError, match=r"empty_dir.*not a zarr store"):
        open_path(empty)

    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(InputError, match=r"notes\.txt.*not a TIFF") as e:
        open_path(txt)
    assert "\n" not in str(e.value)

    bad_tif = tmp_path / "broken.tif"
    bad_tif.write_bytes(b"II*\x00garbage")
    with pytest.raises(InputError, match=r"broken\.tif"):
        open_path(bad_tif)

    # URLs are read (tests/test_objstore.py); a scheme with no store is refused at once
    with pytest.raises(UnsupportedLocationError, match=r"'ftp://host/image.zarr'.*does not open"):
        open_path("ftp://host/image.zarr")


def test_plate_needs_component(tmp_path):
    g = zarr.open_group(tmp_path / "plate.zarr", mode="w", zarr_format=2)
    g.attrs["plate"] = {
        "version": "0.4",
        "rows": [{"name": "A"}],
        "columns": [{"name": "1"}],
        "wells": [{"path": "A/1"}],
    }
    with pytest.raises(InputError, match="plate.*component"):
        open_path(tmp_path / "plate.zarr")


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_test_images_are_valid_ngff(tmp_path, data4d, version):
    """The images these tests build follow the spec (ome-zarr-models' pydantic models)."""
    pytest.importorskip("ome_zarr_models")
    if version == "0.4":
        from ome_zarr_models.v04.image import Image
    else:
        from ome_zarr_models.v05.image import Image
    make_ome(tmp_path / "img.zarr", data4d, AXES_CZYX, version)
    Image.from_zarr(zarr.open_group(tmp_path / "img.zarr", mode="r"))


@pytest.mark.parametrize("fmt", [2, 3])
def test_the_output_is_opened_with_the_format_it_was_created_with(tmp_path, fmt):
    """The relabel's workers and the read-back open the output with the zarr format the
    run created it with, so zarr reads that format's metadata only (on an object store
    one request, not three). Oracle: the other format's metadata document, planted
    beside it, makes zarr warn when it is read; with the format given it never is."""
    import json
    import warnings

    from blockbuster.io import OutputTarget
    from blockbuster.io._zarrio import open_zarr_array_cached

    out = OutputTarget(str(tmp_path / "labels.zarr"), zarr_format=fmt)
    out.create((8, 8), np.uint32, (4, 4), {"run_key": "k"})
    assert out.created_format == fmt
    other = (
        ("zarr.json", {"zarr_format": 3, "node_type": "group"})
        if fmt == 2
        else (
            ".zarray",
            {
                "zarr_format": 2,
                "shape": [8, 8],
                "chunks": [4, 4],
                "dtype": "<u4",
                "compressor": None,
                "fill_value": 0,
                "filters": None,
                "order": "C",
            },
        )
    )
    with open(os.path.join(out.path, other[0]), "w") as f:
        json.dump(other[1], f)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert out.open("r").metadata.zarr_format == fmt
        arr = open_zarr_array_cached(out.path, out.token + "-given", "r+", out.created_format)
        assert arr.metadata.zarr_format == fmt
    if fmt == 3:  # the oracle: without the format zarr reads both documents, and warns
        with pytest.warns(UserWarning, match="Both zarr.json"):
            open_zarr_array_cached(out.path, out.token + "-probed", "r+")

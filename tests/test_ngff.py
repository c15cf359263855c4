"""Tests of blockbuster.io: label images inside OME-Zarr images.

The output is read back with ome-zarr-py's reader (the library napari-ome-zarr uses;
ome-zarr >= 0.11 reads NGFF 0.5 / zarr v3, both versions are checked with it) and
validated with ome-zarr-models (pydantic models of the NGFF 0.4 and 0.5 specs), when
installed.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import zarr

from blockbuster.errors import InvalidParameterError
from blockbuster.io import LabelTarget, label_target, open_path

AXES_CZYX = [
    {"name": "c", "type": "channel"},
    {"name": "z", "type": "space", "unit": "micrometer"},
    {"name": "y", "type": "space", "unit": "micrometer"},
    {"name": "x", "type": "space", "unit": "micrometer"},
]
AXES_CYX = [
    {"name": "c", "type": "channel"},
    {"name": "y", "type": "space"},
    {"name": "x", "type": "space"},
]


def make_ome(path, shape, axes, version, n_levels=3, chunks=None, translation=False):
    """An OME-Zarr image (0.4: zarr v2, 0.5: zarr v3) whose y/x halve per level (ceil).

    Pixels are not needed for labels: the arrays stay empty (metadata only).
    Returns the level shapes.
    """
    fmt = 2 if version == "0.4" else 3
    g = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    halve = [a["name"] in ("y", "x") for a in axes]
    shapes, datasets = [], []
    s = tuple(shape)
    for i in range(n_levels):
        kw = (
            {"chunk_key_encoding": {"name": "v2", "separator": "/"}}
            if fmt == 2
            else {"dimension_names": [a["name"] for a in axes]}
        )
        ch = chunks or tuple(1 if a.get("type") == "channel" else 16 for a in axes)
        g.create_array(
            str(i), shape=s, dtype="uint16", chunks=tuple(min(c, n) for c, n in zip(ch, s)), **kw
        )
        shapes.append(s)
        scale = [
            1.0 if a.get("type") == "channel" else (0.5 * 2**i if h else 2.0)
            for a, h in zip(axes, halve)
        ]
        tr = [{"type": "scale", "scale": scale}]
        if translation:
            tr.append(
                {
                    "type": "translation",
                    "translation": [0.0 if a.get("type") == "channel" else 0.25 * i for a in axes],
                }
            )
        datasets.append({"path": str(i), "coordinateTransformations": tr})
        s = tuple(-(-n // 2) if h else n for n, h in zip(s, halve))
    ms = {"name": "img", "axes": axes, "datasets": datasets}
    if version == "0.4":
        ms["version"] = "0.4"
        g.attrs["multiscales"] = [ms]
    else:
        g.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    return shapes


def label_pattern(shape):
    """Blocks of distinct labels with background gaps (any integer pattern would do)."""
    idx = np.indices(shape)
    lab = np.ones(shape, np.int64)
    for ax, _n in enumerate(shape):
        lab = lab * 7 + idx[ax] // 6
    lab = (lab % 1000 + 1).astype(np.uint32)
    lab[(idx[-1] % 6 == 0) | (idx[-2] % 6 == 0)] = 0
    return lab


def write_level0_chunkwise(target: LabelTarget, data: np.ndarray, chunks):
    """What the pipeline does: every chunk written by its own (re)opened array."""
    for index in np.ndindex(*[-(-s // c) for s, c in zip(data.shape, chunks)]):
        sl = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, chunks, data.shape))
        zarr.open_array(target.level0_path, mode="r+")[sl] = data[sl]


def read_attrs(path, version):
    """The OME metadata of a group, straight from its metadata file ({} when none)."""
    if version == "0.4":
        p = os.path.join(path, ".zattrs")
        if not os.path.exists(p):
            return {}
        with open(p) as f:
            return json.load(f)
    with open(os.path.join(path, "zarr.json")) as f:
        return json.load(f).get("attributes", {}).get("ome", {})


def expected_level(data, image_shapes, level):
    """Striding by the image's factors (y/x by 2, z kept)."""
    out = data
    for _ in range(level):
        out = out[..., ::2, ::2]
    return out


CASES = [
    ("0.4", AXES_CZYX, (2, 5, 50, 45)),
    ("0.5", AXES_CZYX, (2, 5, 50, 45)),
    ("0.4", AXES_CYX, (3, 64, 70)),
    ("0.5", AXES_CYX, (3, 64, 70)),
]


@pytest.mark.parametrize("version,axes,shape", CASES)
def test_labels_written_and_read_by_ome_zarr_py(tmp_path, version, axes, shape):
    reader = pytest.importorskip("ome_zarr.reader")
    from ome_zarr.io import parse_url

    img = tmp_path / "img.zarr"
    image_shapes = make_ome(img, shape, axes, version, translation=True)
    src = open_path(img)
    ident_before = src.identity()

    t = label_target(str(img / "labels" / "cells"))
    assert isinstance(t, LabelTarget)
    assert t.ngff_version == version and t.zarr_format == (2 if version == "0.4" else 3)
    assert t.image_path == os.path.realpath(img) and t.name == "cells"
    assert t.level0_path == os.path.join(os.path.realpath(img), "labels", "cells", "0")
    assert t.spatial_shape == shape[1:]
    spatial_shapes = [s[1:] for s in image_shapes]
    assert t.level_shapes == spatial_shapes

    chunks = (16,) * len(t.spatial_shape)
    arr = t.create_level0(t.spatial_shape, np.uint32, chunks)
    assert arr.shape == t.spatial_shape
    assert arr.chunks == tuple(min(c, n) for c, n in zip(chunks, t.spatial_shape))  # clipped
    data = label_pattern(t.spatial_shape)
    write_level0_chunkwise(t, data, chunks)
    t.finish(
        colors={1: (255, 0, 0), 2: (0, 255, 0, 128)},
        properties={1: {"class": "a"}, 2: {"class": "b"}},
    )

    # pixels of every level: striding by the image's factors
    for lv, s in enumerate(spatial_shapes):
        z = zarr.open_array(t.level_path(lv), mode="r")
        assert z.shape == s and z.dtype == np.uint32
        np.testing.assert_array_equal(z[...], expected_level(data, image_shapes, lv))

    # metadata, as written
    ms_axes = [a for a in axes if a["type"] != "channel"]
    meta = read_attrs(t.group_path, version)
    assert meta["image-label"]["source"] == {"image": "../../"}
    assert meta["image-label"]["colors"][1] == {"label-value": 2, "rgba": [0, 255, 0, 128]}
    assert meta["multiscales"][0]["axes"] == ms_axes
    ds = meta["multiscales"][0]["datasets"]
    assert [d["path"] for d in ds] == ["0", "1", "2"]
    assert ds[1]["coordinateTransformations"][0]["scale"] == [2.0, 1.0, 1.0][-len(ms_axes) :]
    assert len(ds[1]["coordinateTransformations"][1]["translation"]) == len(ms_axes)
    assert read_attrs(t.labels_path, version)["labels"] == ["cells"]
    if version == "0.5":
        zj = json.load(open(os.path.join(t.level0_path, "zarr.json")))
        assert zj["dimension_names"] == [a["name"] for a in ms_axes]
    else:
        assert (
            json.load(open(os.path.join(t.level0_path, ".zarray")))["dimension_separator"] == "/"
        )

    # ome-zarr-py, from the image: finds the labels and recognises a label image
    nodes = list(reader.Reader(parse_url(str(img)))())
    label_nodes = [n for n in nodes if n.load(reader.Label)]
    assert len(label_nodes) == 1
    ln = label_nodes[0]
    assert ln.load(reader.Multiscales) is not None
    assert ln.metadata["name"] == "cells"
    assert len(ln.data) == len(image_shapes)
    assert [tuple(d.shape) for d in ln.data] == spatial_shapes
    assert [a["name"] for a in ln.metadata["axes"]] == [a["name"] for a in ms_axes]
    assert ln.metadata["color"][2] == pytest.approx([0, 1, 0, 128 / 255])
    assert ln.metadata["properties"][1] == {"class": "a"}
    np.testing.assert_array_equal(ln.data[1].compute(), expected_level(data, image_shapes, 1))
    assert any(n.load(reader.Labels) for n in nodes)

    # ... and from the label path itself: it finds its source image through ../../
    lnodes = list(reader.Reader(parse_url(t.group_path))())
    assert [n for n in lnodes if n.load(reader.Label)]
    image_nodes = [n for n in lnodes if n.load(reader.Multiscales) and not n.load(reader.Label)]
    assert image_nodes and tuple(image_nodes[0].data[0].shape) == shape

    # the label image opens as an input too (no channel axis)
    lsrc = open_path(t.group_path, level=1)
    assert lsrc.kind == "ome-zarr" and lsrc.channel_axis is None
    assert lsrc.shape == spatial_shapes[1] and lsrc.ngff_version == version

    # writing labels into the image does not change the image's identity
    assert open_path(img).identity() == ident_before


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_labels_validate_with_ome_zarr_models(tmp_path, version):
    """The spec's own rules, as encoded by ome-zarr-models (pydantic), accept the output."""
    pytest.importorskip("ome_zarr_models")
    if version == "0.4":
        from ome_zarr_models.v04.image_label import ImageLabel
        from ome_zarr_models.v04.labels import Labels
    else:
        from ome_zarr_models.v05.image_label import ImageLabel
        from ome_zarr_models.v05.labels import Labels
    img = tmp_path / "img.zarr"
    make_ome(img, (2, 5, 40, 36), AXES_CZYX, version)
    t = label_target(img / "labels" / "seg")
    t.create_level0(t.spatial_shape, "uint16", (5, 16, 16))[...] = 3
    t.finish(colors={3: (1, 2, 3)})
    label = ImageLabel.from_zarr(zarr.open_group(t.group_path, mode="r"))
    attrs = label.attributes.ome if version == "0.5" else label.attributes
    assert len(attrs.multiscales[0].datasets) == 3
    assert attrs.image_label.source.image == "../../"
    labels = Labels.from_zarr(zarr.open_group(t.labels_path, mode="r"))
    lattrs = labels.attributes.ome if version == "0.5" else labels.attributes
    assert lattrs.labels == ["seg"]


def test_odd_shapes_and_anisotropic_factors(tmp_path):
    img = tmp_path / "odd.zarr"
    shapes = make_ome(img, (1, 3, 33, 17), AXES_CZYX, "0.5", n_levels=4)
    assert shapes[-1] == (1, 3, 5, 3)
    t = label_target(img / "labels" / "x")
    data = label_pattern(t.spatial_shape).astype(np.uint16)
    t.create_level0(t.spatial_shape, np.uint16, (2, 8, 8))[...] = data
    t.finish(max_block_bytes=64)  # tiny blocks: many of them, same result
    for lv in range(4):
        z = zarr.open_array(t.level_path(lv))
        assert z.shape == shapes[lv][1:]
        np.testing.assert_array_equal(z[...], data[:, :: 2**lv, :: 2**lv])


def test_non_integer_factor_uses_nearest_centres(tmp_path):
    img = tmp_path / "nf.zarr"
    make_ome(img, (1, 30, 30), AXES_CYX, "0.4", n_levels=1)
    g = zarr.open_group(img, mode="r+")
    g.create_array("1", shape=(1, 12, 30), dtype="uint16", chunks=(1, 12, 30))
    ms = g.attrs["multiscales"]
    ms[0]["datasets"].append(
        {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 2.5, 0.5]}]}
    )
    g.attrs["multiscales"] = ms
    t = label_target(img / "labels" / "a")
    data = np.arange(30 * 30, dtype=np.uint32).reshape(30, 30)
    t.create_level0((30, 30), "uint32", (10, 10))[...] = data
    t.finish()
    rows = ((np.arange(12) + 0.5) * 30 / 12).astype(int)
    np.testing.assert_array_equal(zarr.open_array(t.level_path(1))[...], data[rows])


def test_parallel_pyramid_and_level_blocks(tmp_path):
    img = tmp_path / "p.zarr"
    make_ome(img, (1, 4, 64, 64), AXES_CZYX, "0.4")
    t = label_target(img / "labels" / "c")
    data = label_pattern(t.spatial_shape)
    t.create_level0(t.spatial_shape, np.uint32, (2, 16, 16))[...] = data
    t.create_levels()
    blocks = t.level_blocks(1, max_block_bytes=2 * 16 * 16 * 4)
    assert len(blocks) == 2 * 2 * 2
    covered = np.zeros(t.level_shapes[1], int)
    for b in blocks:
        covered[b] += 1
    assert (covered == 1).all()
    with ThreadPoolExecutor(4) as ex:
        t.finish(executor=ex, max_block_bytes=4096)
    np.testing.assert_array_equal(zarr.open_array(t.level_path(2))[...], data[:, ::4, ::4])
    # or built by the caller (e.g. mapped on a cluster), then finish(build_pyramid=False)
    t2 = label_target(img / "labels" / "d")
    t2.create_level0(t2.spatial_shape, np.uint32, (2, 16, 16))[...] = data
    t2.create_levels()
    for lv in range(1, t2.n_levels):
        for b in t2.level_blocks(lv):
            t2.downsample_block(lv, b)
    t2.finish(build_pyramid=False)
    assert read_attrs(t2.labels_path, "0.4")["labels"] == ["c", "d"]


def test_labels_list_append_no_duplicates_and_rewrite(tmp_path):
    img = tmp_path / "i.zarr"
    make_ome(img, (2, 32, 32), AXES_CYX, "0.5", n_levels=2)
    for name in ["a", "b", "a"]:
        t = label_target(img / "labels" / name)
        t.create_level0(t.spatial_shape, "uint8", (16, 16))[...] = 1
        # while being written, a label image is not advertised
        assert name not in read_attrs(t.labels_path, "0.5")["labels"]
        assert "image-label" not in read_attrs(t.group_path, "0.5")
        t.finish()
    assert read_attrs(t.labels_path, "0.5")["labels"] == ["b", "a"]
    t.finish()
    assert read_attrs(t.labels_path, "0.5")["labels"] == ["b", "a"]


def test_create_level0_resume_and_errors(tmp_path):
    img = tmp_path / "i.zarr"
    make_ome(img, (2, 32, 32), AXES_CYX, "0.4", n_levels=2)
    t = label_target(img / "labels" / "a")
    with pytest.raises(InvalidParameterError, match=r"spatial shape \(32, 32\)"):
        t.create_level0((2, 32, 32), "uint32", (16, 16))
    with pytest.raises(InvalidParameterError, match="dtype=float32"):
        t.create_level0((32, 32), "float32", (16, 16))
    with pytest.raises(InvalidParameterError, match="chunks"):
        t.create_level0((32, 32), "uint32", (16,))
    with pytest.raises(InvalidParameterError, match="create_level0"):
        t.finish()
    z = t.create_level0((32, 32), "uint32", (16, 16))
    z[:16, :16] = 5
    again = t.create_level0((32, 32), "uint32", (16, 16), overwrite=False)
    assert again[0, 0] == 5  # reused for a resumed run
    with pytest.raises(InvalidParameterError, match="overwrite=True"):
        t.create_level0((32, 32), "uint64", (16, 16), overwrite=False)
    assert t.create_level0((32, 32), "uint32", (16, 16))[0, 0] == 0  # replaced
    with pytest.raises(InvalidParameterError, match="colors"):
        t.finish(colors={1: (300, 0, 0)})


def test_label_target_none_and_refusals(tmp_path):
    assert label_target(tmp_path / "out.zarr") is None
    assert label_target(tmp_path / "missing.zarr" / "labels" / "a") is None
    zarr.open_group(tmp_path / "plain.zarr", mode="w")
    assert label_target(tmp_path / "plain.zarr" / "labels" / "a") is None
    make_ome(tmp_path / "img.zarr", (2, 16, 16), AXES_CYX, "0.5", n_levels=1)
    assert label_target(tmp_path / "img.zarr" / "other" / "a") is None
    assert label_target(tmp_path / "img.zarr" / "labels") is None
    assert label_target(str(tmp_path / "img.zarr" / "labels" / "a") + "/") is not None

    old = zarr.open_group(tmp_path / "old.zarr", mode="w", zarr_format=2)
    old.create_array("0", shape=(16, 16), dtype="u1")
    old.attrs["multiscales"] = [
        {"version": "0.3", "axes": ["y", "x"], "datasets": [{"path": "0"}]}
    ]
    with pytest.raises(InvalidParameterError, match="0.3"):
        label_target(tmp_path / "old.zarr" / "labels" / "a")


def test_label_target_pickles(tmp_path):
    import pickle

    make_ome(tmp_path / "img.zarr", (2, 16, 16), AXES_CYX, "0.4", n_levels=1)
    t = label_target(tmp_path / "img.zarr" / "labels" / "a")
    assert pickle.loads(pickle.dumps(t)) == t

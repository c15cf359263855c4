# ruff: noqa: B023  (each lambda is called at once, inside its loop iteration)
"""What blockbuster may write and delete, through the public API (docs/security.md).

Every refusal is checked against the bytes on disk: the tree around the input and the
output is hashed before and after (tests/_trees.py), and must be unchanged. Most cases
are refused while validating, before any cluster or Prefect server starts.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi
import zarr
from _trees import assert_refused, tree_state
from conftest import same_partition

from blockbuster import merge_tile_labels, tile_process
from blockbuster.errors import (
    BlockbusterError,
    InvalidParameterError,
    LabelOverflowError,
    OutputExistsError,
    PathNotAllowedError,
    TileFunctionError,
    UnsupportedLocationError,
)
from blockbuster.io import OutputLock, lock_path
from blockbuster.synthetic import write_synthetic_zarr


def label(tile):
    return ndi.label(tile > 0.3 * 65535)[0]


def _ome(path, shape=(32, 32), fmt=3):
    g = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    g.create_array("0", shape=shape, chunks=(16, 16), dtype="u2")[...] = 1
    ms = {
        "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [
            {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0]}]}
        ],
    }
    if fmt == 3:
        g.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    else:
        g.attrs["multiscales"] = [{**ms, "version": "0.4"}]
    return str(path)


@pytest.fixture
def place(tmp_path):
    """A folder with an input image, a hand-made folder and file, and an OME-Zarr image
    with a hand-made label image; returns a namespace of paths."""

    class P:
        base = tmp_path
        image = write_synthetic_zarr(str(tmp_path / "img.zarr"), (64, 64), (32, 32), seed=1)
        notes = tmp_path / "precious"
        ome = _ome(tmp_path / "cells.ome.zarr")

    P.notes.mkdir()
    (P.notes / "notes.txt").write_text("a year of work")
    (tmp_path / "file.txt").write_text("keep me")
    manual = zarr.open_group(os.path.join(P.ome, "labels", "manual"), mode="w")
    manual.create_array("0", shape=(32, 32), chunks=(16, 16), dtype="u4")[...] = 7
    return P


def test_never_replaces_what_blockbuster_did_not_write(place):
    b = place.base
    for target, why in [
        (str(place.notes), "a folder that is not a zarr store"),
        (str(b / "file.txt"), "a file"),
        (os.path.join(place.ome, "labels", "manual"), "did not write"),
    ]:
        for overwrite in (False, True):
            e = assert_refused(
                lambda: tile_process(
                    place.image, label, tile_shape=(32, 32), write_to=target, overwrite=overwrite
                ),
                OutputExistsError,
                b,
                match=why,
                case=f"api: write_to is {why} (overwrite={overwrite})",
            )
            assert isinstance(e, FileExistsError) and target in str(e)


def test_never_the_input_around_it_or_inside_it(place):
    b = place.base
    cases = [
        (place.image, "is the input"),
        (str(b), "contains the input"),
        (os.path.join(place.image, "labels", "x"), "inside the input"),
        (os.path.join(place.ome, "0"), "inside the input"),
        (os.path.join(place.ome, "labels", "a", "b"), "inside the input"),
    ]
    for target, why in cases:
        src = place.ome if target.startswith(place.ome) else place.image
        assert_refused(
            lambda: tile_process(src, label, tile_shape=(32, 32), write_to=target, overwrite=True),
            InvalidParameterError,
            b,
            match=why,
            case=f"api: write_to {why}",
        )
    # merge_tile_labels("x.zarr", write_to="x.zarr") used to delete its input first
    assert_refused(
        lambda: merge_tile_labels(place.image, write_to=place.image, overwrite=True),
        ValueError,
        b,
        match="is the input",
        case="api: merge write_to is its own input",
    )
    # the staging is never the input, around it or inside it, and never the output
    for staging, why in [
        (place.image, "is the input"),
        (str(b), "contains the input"),
        (os.path.join(place.image, "st"), "inside the input"),
        (str(b / "out.zarr" / "st"), "overlap"),
    ]:
        assert_refused(
            lambda: tile_process(
                place.image,
                label,
                tile_shape=(32, 32),
                write_to=str(b / "out.zarr"),
                staging=staging,
            ),
            InvalidParameterError,
            b,
            match=why,
            case=f"api: staging {why}",
        )
    assert_refused(
        lambda: tile_process(
            place.image,
            label,
            tile_shape=(32, 32),
            write_to=str(b / "o.zarr"),
            staging=place.notes,
        ),
        OutputExistsError,
        b,
        match="not a blockbuster staging",
        case="api: staging is a folder blockbuster did not make",
    )


def test_urls_and_fsspec_syntax_are_refused_and_never_written_locally(place, monkeypatch):
    b = place.base
    monkeypatch.chdir(b)
    # s3:// and gs:// URLs are object stores now (tests/test_objstore.py); other schemes,
    # a scheme with one slash and fsspec chaining are still refused
    for value in [
        "ftp://bucket/labels.zarr",
        "s3:/bucket/labels.zarr",
        "memory://x",
        os.path.join(place.ome, "labels", "manual::memory"),
        str(b / "shared::memory"),
        "a::b",
    ]:
        for param in ("write_to", "staging"):
            kw = {param: value}
            if param == "staging":
                kw["write_to"] = str(b / "o.zarr")
            assert_refused(
                lambda: tile_process(place.image, label, tile_shape=(32, 32), **kw),
                UnsupportedLocationError,
                b,
                match=param,
                case=f"api: {param}={value!r}",
            )
        assert_refused(
            lambda: tile_process(value, label, tile_shape=(32, 32)),
            UnsupportedLocationError,
            b,
            match="image",
            case=f"api: image={value!r}",
        )
    for bad, err in [("a\x00b", ValueError), ("n" * 300, ValueError), (3, TypeError)]:
        assert_refused(
            lambda: tile_process(place.image, label, tile_shape=(32, 32), write_to=bad),
            err,
            b,
            case=f"api: write_to={str(bad)[:20]!r}",
        )


def test_paths_inside_a_store_stay_inside_it(tmp_path):
    other = write_synthetic_zarr(str(tmp_path / "other.zarr"), (32, 32), (16, 16), seed=2)
    img = _ome(tmp_path / "x" / "evil.ome.zarr")
    g = zarr.open_group(img, mode="r+")
    ome = dict(g.attrs["ome"])
    ome["multiscales"][0]["datasets"][0]["path"] = "../../other.zarr"
    g.attrs["ome"] = ome
    assert os.path.exists(other)
    for call, case in [
        (lambda: tile_process(img, label, tile_shape=(16, 16)), "api: NGFF dataset path ../.."),
        (
            lambda: tile_process(
                str(tmp_path / "other.zarr"),
                label,
                tile_shape=(16, 16),
                write_to=os.path.join(img, "labels", "x"),
            ),
            "api: write into an image whose dataset path leaves it",
        ),
    ]:
        assert_refused(call, PathNotAllowedError, tmp_path, match="leaves the store", case=case)
    os.symlink(tmp_path / "other.zarr", os.path.join(img, "1"))
    ome["multiscales"][0]["datasets"][0]["path"] = "1"
    g.attrs["ome"] = ome
    assert_refused(
        lambda: tile_process(img, label, tile_shape=(16, 16)),
        PathNotAllowedError,
        tmp_path,
        match="outside the store",
        case="api: NGFF dataset path is a link out of the store",
    )


_OME_TWO_FILES = """<?xml version="1.0" encoding="UTF-8"?>
<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" UUID="urn:uuid:{a}">
<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint16"
 SizeX="32" SizeY="32" SizeZ="2" SizeC="1" SizeT="1">
<Channel ID="Channel:0:0" SamplesPerPixel="1"/>
<TiffData IFD="0" PlaneCount="1" FirstZ="0"><UUID FileName="master.ome.tif">urn:uuid:{a}</UUID>
</TiffData>
<TiffData IFD="0" PlaneCount="1" FirstZ="1"><UUID FileName="{second}">urn:uuid:{b}</UUID>
</TiffData>
</Pixels></Image></OME>"""


def test_multi_file_ome_tiff_names_only_files_beside_it(tmp_path, client):
    import tifffile

    a, b = "00000000-0000-0000-0000-00000000000a", "00000000-0000-0000-0000-00000000000b"
    folder = tmp_path / "acq"
    folder.mkdir()
    plane = (np.arange(32 * 32).reshape(32, 32) % 7 > 3).astype(np.uint16) * 60000
    tifffile.imwrite(tmp_path / "secret.ome.tif", 60000 - plane)  # outside the folder
    tifffile.imwrite(folder / "inside.ome.tif", plane)
    os.symlink(tmp_path / "secret.ome.tif", folder / "link.ome.tif")
    master = folder / "master.ome.tif"

    def write_master(second: str) -> str:
        xml = _OME_TWO_FILES.format(a=a, b=b, second=second)
        tifffile.imwrite(master, plane, description=xml, metadata=None)
        return str(master)

    # the good case: the second plane comes from the file beside the master
    img = write_master("inside.ome.tif")
    lab = tile_process(img, label, tile_shape=(1, 16, 16), compute=True, write_to=None)
    assert lab.shape == (2, 32, 32) and np.array_equal(lab[1] > 0, plane > 0)
    for second, case in [
        ("../secret.ome.tif", "api: OME-TIFF FileName ../"),
        (str(tmp_path / "secret.ome.tif"), "api: OME-TIFF FileName absolute"),
        ("link.ome.tif", "api: OME-TIFF FileName is a link out of its folder"),
    ]:
        img = write_master(second)
        assert_refused(
            lambda: tile_process(img, label, tile_shape=(1, 16, 16)),
            PathNotAllowedError,
            tmp_path,
            match="multi-file OME-TIFF.*outside the folder",
            case=case,
        )


def test_errors_are_the_builtins_a_python_user_catches(place):
    b = place.base
    e = assert_refused(
        lambda: tile_process(str(b / "missing.zarr"), label),
        FileNotFoundError,
        b,
        case="api: missing input",
    )
    assert isinstance(e, BlockbusterError) and "missing.zarr" in str(e)
    assert_refused(
        lambda: tile_process(place.image, "label"),
        TypeError,
        b,
        match="fn=",
        case="api: fn not callable",
    )
    assert_refused(
        lambda: tile_process(place.image, label, tile_shape=(32, 32), empty_threshold="3"),
        TypeError,
        b,
        match="empty_threshold",
        case="api: empty_threshold is a string",
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"skip_empty": True, "empty_threshold": math.nan}, "finite"),
        ({"skip_empty": True, "empty_threshold": math.inf}, "finite"),
        ({"overlap": 8, "iou_threshold": math.nan}, "iou_threshold"),
        ({"overlap": 65}, "larger than the image"),
        ({"overlap": (0, 100)}, "larger than the image"),
    ],
)
def test_bounds(place, kwargs, match):
    assert_refused(
        lambda: tile_process(
            place.image, label, tile_shape=(32, 32), write_to=str(place.base / "o.zarr"), **kwargs
        ),
        ValueError,
        place.base,
        match=match,
        case=f"api: {kwargs}",
    )


def test_tile_count_is_bounded_before_the_grid_is_built(tmp_path):
    huge = da.zeros((10**6, 10**6), dtype="u1", chunks=(4096, 4096))  # lazy: 1 TB
    t0 = time.perf_counter()
    e = assert_refused(
        lambda: tile_process(huge, label, tile_shape=(1, 1)),
        ValueError,
        tmp_path,
        match="blockbuster.max-tiles",
        case="api: tile_shape=(1, 1) on 10^12 voxels",
    )
    assert time.perf_counter() - t0 < 5 and "10" in str(e)
    with dask.config.set({"blockbuster.max-tiles": 3}):
        assert_refused(
            lambda: tile_process(np.zeros((64, 64), "u1"), label, tile_shape=(32, 32)),
            ValueError,
            tmp_path,
            match="more than the limit of 3",
            case="api: 4 tiles over a max-tiles setting of 3",
        )


def test_a_planted_lock_symlink_is_never_followed(place):
    out = str(place.base / "out.zarr")
    victim = place.base / "file.txt"
    os.symlink(victim, lock_path(out))
    assert_refused(
        lambda: tile_process(place.image, label, tile_shape=(32, 32), write_to=out),
        FileExistsError,
        place.base,
        match="symbolic link",
        case="api: the output's lock file is a planted symlink",
    )
    assert victim.read_text() == "keep me"


# --- runs (a real cluster and Prefect) -------------------------------------------------
def test_overwrite_replaces_only_a_complete_output_of_ours(place, client):
    out = str(place.base / "out.zarr")
    truth = label(zarr.open_array(place.image)[...])
    tile_process(place.image, label, tile_shape=(32, 32), write_to=out)
    before = tree_state(out)
    # another run's parameters: refused without overwrite, bytes intact
    assert_refused(
        lambda: tile_process(place.image, label, tile_shape=(16, 16), write_to=out),
        OutputExistsError,
        place.base,
        match="overwrite=True",
        case="api: complete output of another run, no overwrite",
    )
    assert tree_state(out) == before
    got = tile_process(
        place.image, label, tile_shape=(16, 16), write_to=out, overwrite=True, compute=True
    )
    assert same_partition(got, truth)
    assert zarr.open_array(out).chunks == (16, 16)


def test_label_ids_that_do_not_fit_name_the_tile(client):
    def huge_ids(tile):
        out = np.zeros(tile.shape, np.uint64)
        out[0, 0] = 2**63 + 5
        return out

    with pytest.raises((LabelOverflowError, TileFunctionError)) as e:
        tile_process(np.ones((32, 32), "u1"), huge_ids, tile_shape=(16, 16), retries=0)
    err = e.value
    chain = [err, err.__cause__]
    assert any(isinstance(x, LabelOverflowError) for x in chain) or "2**63" in str(err)
    assert "tile" in str(err) and "origin" in str(err), str(err)


_CONCURRENT = """
import json, sys, time
import scipy.ndimage as ndi
from blockbuster import tile_process

class Slow:
    def __call__(self, tile):
        time.sleep(0.05)
        return ndi.label(tile > 0.3 * 65535)[0]
    def cache_token(self):
        return "slow-label"

lab, summary = tile_process(sys.argv[1], Slow(), tile_shape=(16, 16), write_to=sys.argv[2],
                            return_summary=True)
print("RESULT", json.dumps({"cached": bool(summary.get("cached", False))}))
"""


@pytest.mark.slow
def test_two_concurrent_runs_on_one_output(tmp_path, prefect_api_url):
    """Two processes run tile_process on one write_to: the second waits for the first's
    lock, then finds the output complete; the output equals the oracle, and exactly one
    of them wrote it (marked it complete).

    Prefect path: both report to the session's server (``prefect_api_url``), as runs
    do beside ``blockbuster up``; the temporary-server path is test_script's."""
    img = write_synthetic_zarr(str(tmp_path / "img.zarr"), (64, 64), (16, 16), seed=4)
    out = str(tmp_path / "out.zarr")
    script = tmp_path / "run.py"
    script.write_text(_CONCURRENT)
    procs = []
    for i in range(2):
        # each its own home; no temporary server (~10 CPU s each): the session's
        env = dict(os.environ, PREFECT_HOME=str(tmp_path / f"ph{i}"))
        env["PREFECT_API_URL"] = prefect_api_url
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), img, out],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results, errs = [], []
    for p in procs:
        stdout, stderr = p.communicate(timeout=900)
        assert p.returncode == 0, stderr[-3000:]
        errs.append(stderr)
        line = [x for x in stdout.splitlines() if x.startswith("RESULT ")][-1]
        results.append(json.loads(line[len("RESULT ") :]))
    assert sorted(r["cached"] for r in results) == [False, True], results
    assert any("being written by another run" in e for e in errs)  # one waited
    rec = zarr.open_array(out).attrs["blockbuster"]
    assert rec["complete"] is True
    truth = label(zarr.open_array(img)[...])
    assert same_partition(zarr.open_array(out)[...], truth)
    assert not os.path.exists(lock_path(out))
    assert not OutputLock(out).is_held()


# --- deployments' segmenters: options on an allow-list, model files under the roots ----
def test_segmenter_options_are_an_allow_list(tmp_path):
    from blockbuster.segmenters import get_segmenter

    assert_refused(
        lambda: get_segmenter("cellpose", eval_anything=1),
        ValueError,
        tmp_path,
        match="does not accept the option 'eval_anything'",
        case="deploy: cellpose option not on the allow-list",
    )
    fn = get_segmenter("cellpose", flow_threshold=0.3)  # on the list
    assert fn.eval_kwargs == {"flow_threshold": 0.3}


def test_model_paths_must_lie_under_the_roots_or_the_model_folder(tmp_path):
    from blockbuster.deploy import Settings, prepare_segment

    root, models, elsewhere = (tmp_path / n for n in ("root", "models", "elsewhere"))
    for d in (root, models, elsewhere):
        d.mkdir()
    img = write_synthetic_zarr(str(root / "img.zarr"), (32, 32), (16, 16), seed=1)
    (elsewhere / "w.pt").write_bytes(b"weights")
    (models / "w.pt").write_bytes(b"weights")
    st = Settings(data_roots=(str(root),), model_dir=str(models))
    seg = {"name": "cellpose", "options": {"pretrained_model": str(elsewhere / "w.pt")}}
    assert_refused(
        lambda: prepare_segment(img, seg, settings=st),
        PermissionError,
        tmp_path,
        match="outside the data roots",
        case="deploy: cellpose pretrained_model outside the roots and model folder",
    )
    ok = {"name": "cellpose", "options": {"pretrained_model": str(models / "w.pt")}}
    req = prepare_segment(img, ok, settings=st)
    assert req.options["pretrained_model"] == str(models / "w.pt")

"""Images, labels and staging in an object store: a real S3 server (moto's server mode,
its own process on 127.0.0.1), configured through the standard AWS environment.

Inputs are written, and outputs read back, with zarr's fsspec path (s3fs) and
ome-zarr-py, independently of blockbuster's own obstore path; labels are compared with
``scipy.ndimage.label`` of the whole image, as partitions.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.ndimage as ndi
import zarr
from conftest import blobs, same_partition

pytest.importorskip("moto")
pytest.importorskip("obstore")
pytest.importorskip("s3fs")

from blockbuster import merge_tile_labels, tile_process  # noqa: E402
from blockbuster.errors import InputError, InvalidParameterError  # noqa: E402
from blockbuster.io import Staging, open_path  # noqa: E402
from blockbuster.io._staging import _objects as object_staging  # noqa: E402
from blockbuster.io._stores import list_prefix  # noqa: E402


def _label(tile):
    return ndi.label(tile > 0)[0]


class FirstChannelLabel:
    def __call__(self, tile):
        return ndi.label(tile[0] > 0)[0]


def _all_objects(bucket_url: str) -> dict[str, str]:
    """key -> ETag of every object in the bucket (what a refused call must not touch)."""
    return {o["path"]: o["e_tag"] for o in list_prefix(bucket_url, recursive=True)[1]}


def _write_ome(url: str, cyx: np.ndarray, version: str = "0.5") -> str:
    from test_formats_pipeline import write_ome_zarr

    return write_ome_zarr(url, cyx, version)


# --------------------------------------------------------------------------------------
# reading: zarr v3 and OME-Zarr from s3://
# --------------------------------------------------------------------------------------
def test_zarr_v3_and_ome_zarr_read_from_s3(s3_bucket):
    img = (np.arange(96 * 80).reshape(96, 80) % 251).astype(np.uint16)
    url = f"{s3_bucket}/plain.zarr"
    zarr.create_array(store=url, shape=img.shape, chunks=(32, 32), dtype=img.dtype)[...] = img
    src = open_path(url)
    assert (src.kind, src.shape, src.chunks, src.zarr_format) == ("zarr", (96, 80), (32, 32), 3)
    np.testing.assert_array_equal(src.read((slice(10, 70), slice(5, 77))), img[10:70, 5:77])
    ident = src.identity()
    assert ident["path"] == url and ident["mtime_ns"] is not None

    cyx = np.stack([img, img // 2])
    ome = _write_ome(f"{s3_bucket}/img.zarr", cyx)
    src = open_path(ome, level=1)
    assert (src.kind, src.ngff_version, src.channel_axis) == ("ome-zarr", "0.5", 0)
    assert src.levels == [(2, 96, 80), (2, 48, 40)]
    np.testing.assert_array_equal(src.read((slice(None),) * 3), cyx[:, ::2, ::2])
    # a rewrite of the metadata changes the identity (ETags and times of the objects)
    before = src.identity()
    assert open_path(ome, level=1).identity() == before
    zarr.open_group(ome, mode="r+").attrs["note"] = "x"
    assert open_path(ome, level=1).identity() != before


def test_bad_urls_one_clear_error_nothing_written(s3_bucket):
    img = blobs((64, 64), seed=2)
    good = f"{s3_bucket}/img.zarr"
    zarr.create_array(store=good, shape=img.shape, chunks=(32, 32), dtype="u1")[...] = img
    before = _all_objects(s3_bucket)
    bucket = s3_bucket.split("://")[1]
    cases = [
        (f"{s3_bucket}/missing.zarr", InputError, "missing.zarr' does not exist"),
        ("s3://no-such-bucket-bb/img.zarr", InputError, "the bucket does not exist"),
        (f"ftp://{bucket}/img.zarr", InvalidParameterError, r"\(ftp://\) of a kind"),
        (f"s3://{bucket}", InputError, "is not a zarr store"),
    ]
    for url, exc, text in cases:
        with pytest.raises(exc, match=text) as info:
            tile_process(url, _label, tile_shape=(32, 32), write_to=f"{s3_bucket}/out.zarr")
        assert url.split("://")[1].split("/")[0] in str(info.value)
    # an output in a missing bucket is refused before anything is computed or written
    with pytest.raises(InputError, match="no-such-bucket-bb/out.zarr'.*bucket does not exist"):
        tile_process(good, _label, tile_shape=(32, 32), write_to="s3://no-such-bucket-bb/out.zarr")
    assert _all_objects(s3_bucket) == before


def test_bad_credentials_and_endpoint_named(s3_bucket, monkeypatch):
    """An unreachable endpoint: one error naming the URL, quickly (no 3-minute retries)."""
    import time

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(InputError, match=r"image 's3://.*/img.zarr': the endpoint cannot be"):
        open_path(f"{s3_bucket}/img.zarr")
    assert time.monotonic() - t0 < 30
    assert "testing" not in str(InputError)  # no credential in the message


def test_wrong_credentials_one_clear_error_naming_the_url(tmp_path, monkeypatch):
    """A server that checks signatures refuses the credentials: one error naming the
    URL and the settings to check, no secret in it, nothing written locally."""
    from s3server import MotoServer

    with MotoServer(check_credentials=True) as srv:
        env = {**srv.env, "AWS_SECRET_ACCESS_KEY": "not-the-secret-42"}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        url = "s3://some-bucket/img.zarr"
        with pytest.raises(InputError, match="credentials were refused") as info:
            open_path(url)
        assert url in str(info.value) and "AWS_SECRET_ACCESS_KEY" in str(info.value)
        monkeypatch.chdir(tmp_path)
        with pytest.raises(InputError, match=r"'s3://some-bucket/img.zarr'.*credentials"):
            tile_process(url, _label, tile_shape=(32, 32), write_to="s3://some-bucket/out.zarr")
        assert "not-the-secret-42" not in str(info.value)
        assert os.listdir(tmp_path) == []  # no local folder named after the URL


# --------------------------------------------------------------------------------------
# staging in the object store
# --------------------------------------------------------------------------------------
def test_object_staging_round_trip_and_flush_policy(s3_bucket, monkeypatch):
    root = f"{s3_bucket}/run/.staging"
    st = Staging(root)
    assert isinstance(st, object_staging.ObjectStaging)
    assert st.prepare({"run_key": "k"}) is False
    arrays = {
        "labels": np.arange(12, dtype=np.uint16).reshape(3, 4),
        "f0lo": np.array([1, 2, 3], np.uint8),
        "empty": np.zeros((0, 5), np.uint32),
    }
    monkeypatch.setattr(object_staging, "FLUSH_SECONDS", 3600.0)
    with st:
        st.write_tile(7, {"n_labels": 11, "origin": [np.int64(3), 4]}, arrays)
        st.write_tile(8, {"n_labels": 0})
        # buffered, not yet written: not finished for any reader
        assert Staging(root).finished_tiles() == []
    reader = Staging(root)
    assert reader.finished_tiles() == [7, 8]
    rec, got = reader.read_tile(7)
    assert rec == {"n_labels": 11, "origin": [3, 4]}
    for k, v in arrays.items():
        np.testing.assert_array_equal(got[k], v)
        assert got[k].dtype == v.dtype
    assert list(reader.read_tile(7, names=("f0lo", "nope"))[1]) == ["f0lo"]
    objects = [o for o in _all_objects(s3_bucket) if "/tiles/" in o]
    assert len(objects) == 1  # both tiles in one object (one PUT)
    # a writer that is due flushes at once: a slow tile is never held back
    monkeypatch.setattr(object_staging, "FLUSH_SECONDS", 0.0)
    w = Staging(root)
    w.write_tile(9, {"n_labels": 1}, {"labels": np.ones((2, 2), np.uint8)})
    assert 9 in Staging(root).finished_tiles()
    # the same run reuses it (resume); another run replaces it
    assert Staging(root).prepare({"run_key": "k"}) is True
    assert Staging(root).prepare({"run_key": "other"}) is False
    assert Staging(root).finished_tiles() == []
    # a prefix holding other objects is never taken over
    zarr.create_array(store=f"{s3_bucket}/data/a.zarr", shape=(2,), dtype="u1")
    before = _all_objects(s3_bucket)
    with pytest.raises(InvalidParameterError, match="not a blockbuster staging"):
        Staging(f"{s3_bucket}/data").prepare({"run_key": "k"})
    assert _all_objects(s3_bucket) == before


def test_a_batch_opens_the_object_staging_without_reading_staging_json(s3_bucket, monkeypatch):
    """The driver prepares the staging and passes its generation with the plan: a
    worker's batch opening it (``Staging(root, generation=...)``) reads no
    ``staging.json`` (one GET a batch before); without it, the staging reads it once."""
    import dataclasses

    from blockbuster.core import make_plan
    from blockbuster.io import open_image
    from blockbuster.tasks import Job

    root = f"{s3_bucket}/run/.staging"
    st = Staging(root)
    st.prepare({"run_key": "k"})
    with Staging(root) as w:
        w.write_tile(0, {"n_labels": 1}, {"labels": np.ones((4, 4), np.uint32)})
    reads = []
    real = object_staging.read_bytes
    monkeypatch.setattr(object_staging, "read_bytes", lambda url: reads.append(url) or real(url))
    given = Staging(root, generation=st.generation)
    assert given.finished_tiles() == [0] and given.read_tile(0)[0] == {"n_labels": 1}
    assert reads == []
    assert Staging(root).finished_tiles() == [0]
    assert [u.rpartition("/")[2] for u in reads] == ["staging.json"]
    # the run's plan carries it to the workers once the driver knows it
    plan = make_plan(open_image(np.zeros((8, 8), np.uint8)), fn_id="f", tile_shape=(4, 4))
    plan = dataclasses.replace(plan, staging_root=root)
    job = Job.create(
        plan=plan,
        source=SimpleNamespace(description="image"),
        fn=None,
        cluster=None,
        output=SimpleNamespace(describe=lambda: "out"),
        progress=False,
        fn_description="fn",
        generation=st.generation,
    )
    assert job.plan.staging_generation == st.generation


def test_a_batch_lists_only_its_own_objects(s3_bucket, monkeypatch):
    """A segment batch asks which of its tiles are finished (a batch run again after
    its worker died skips them) by listing only its own prefix: one listing of nothing
    on a first run, whatever the staging already holds; run again, it finds exactly
    what it staged. The driver's full listing (resume) still sees every object."""
    root = f"{s3_bucket}/run/.staging"
    Staging(root).prepare({"run_key": "k"})
    monkeypatch.setattr(object_staging, "FLUSH_SECONDS", 3600.0)
    for first in range(0, 40, 4):  # ten earlier batches, one object each
        with Staging(root) as w:
            assert w.finished_in(range(first, first + 4)) == set()
            for n in range(first, first + 4):
                w.write_tile(n, {"n_labels": n})
    tiles = [o for o in _all_objects(s3_bucket) if "/tiles/" in o]
    assert len(tiles) == 10
    assert all(o.split("/tiles/")[1].split("/")[0].startswith("b") for o in tiles)
    listed = []
    real = object_staging.list_prefix
    monkeypatch.setattr(
        object_staging, "list_prefix", lambda url, **k: listed.append(url) or real(url, **k)
    )
    tocs = []
    real_range = object_staging.read_range
    monkeypatch.setattr(
        object_staging, "read_range", lambda url, a, b: tocs.append(url) or real_range(url, a, b)
    )
    fresh = Staging(root)
    assert fresh.finished_in([40, 41, 42]) == set()  # a new batch
    assert [u.rpartition("/tiles/")[2] for u in listed] == ["b40"] and tocs == []
    with fresh:
        fresh.write_tile(40, {"n_labels": 1})  # it dies after staging one tile
    object_staging._INDEXES.clear()  # a rerun, on another worker
    listed.clear()
    assert Staging(root).finished_in([40, 41, 42]) == {40}
    assert [u.rpartition("/tiles/")[2] for u in listed] == ["b40"] and len(tocs) == 1
    assert Staging(root).finished_in([8, 9, 10, 11]) == {8, 9, 10, 11}  # batch b8's
    # the driver's resume lists everything
    assert Staging(root).finished_tiles() == list(range(41))


def test_object_staging_prefetch_reads_a_batch_per_object(s3_bucket, monkeypatch):
    """A batch asks for its tiles first: one ``get_ranges`` call per object (obstore
    coalesces and parallelises them), then every ``read_tile`` is answered from what
    came back, with no request of its own; what was not asked for is still read."""
    root = f"{s3_bucket}/run/.staging"
    st = Staging(root)
    st.prepare({"run_key": "k"})
    monkeypatch.setattr(object_staging, "FLUSH_SECONDS", 3600.0)
    rng = np.random.default_rng(5)
    written = {}
    for first in (0, 8, 16):  # three objects of 8 tiles
        with Staging(root) as w:
            for n in range(first, first + 8):
                written[n] = {
                    "labels": rng.integers(0, 9, (16, 16)).astype(np.uint32),
                    "f0lo": rng.integers(0, 9, 16).astype(np.uint32),
                }
                w.write_tile(n, {"n_labels": n}, written[n])
    calls = {"range": 0, "ranges": 0}

    def counted(name, fn):
        def call(*a, **k):
            calls[name] += 1
            return fn(*a, **k)

        return call

    monkeypatch.setattr(object_staging, "read_range", counted("range", object_staging.read_range))
    monkeypatch.setattr(
        object_staging, "read_ranges", counted("ranges", object_staging.read_ranges)
    )
    reader = Staging(root)
    assert reader.finished_tiles() == list(range(24))  # its index: the objects' contents
    calls.update(range=0, ranges=0)
    batch = [3, 4, 9, 10, 11, 20, 99]  # 99 is not staged: left to read_tile
    reader.prefetch(batch, ("labels",))
    assert calls == {"range": 0, "ranges": 3}  # one call per object holding a tile
    for n in batch[:-1]:
        rec, got = reader.read_tile(n, names=("labels",))
        assert rec == {"n_labels": n}
        np.testing.assert_array_equal(got["labels"], written[n]["labels"])
    assert calls == {"range": 0, "ranges": 3}
    with pytest.raises(FileNotFoundError, match="tile 99"):
        reader.read_tile(99, names=("labels",))
    # each prefetched span is taken once; other names, or a second read, go to the store
    np.testing.assert_array_equal(
        reader.read_tile(3, names=("labels",))[1]["labels"], written[3]["labels"]
    )
    np.testing.assert_array_equal(
        reader.read_tile(4, names=("f0lo",))[1]["f0lo"], written[4]["f0lo"]
    )
    assert calls == {"range": 2, "ranges": 3}
    reader.prefetch([5, 6], ("labels",))
    reader.close()  # the batch is done: what was fetched ahead is dropped
    assert reader._fetched == {}


# --------------------------------------------------------------------------------------
# end to end: labels to s3://
# --------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("ndim", [2, 3])
def test_tile_process_s3_in_s3_out_touch_merge(s3_bucket, client, ndim):
    shape = (96, 80) if ndim == 2 else (24, 40, 36)
    tiles = (32, 32) if ndim == 2 else (8, 16, 16)
    img = blobs(shape, seed=3 + ndim)
    url = f"{s3_bucket}/img.zarr"
    zarr.create_array(store=url, shape=shape, chunks=tiles, dtype="u1")[...] = img
    out = f"{s3_bucket}/results/labels.zarr"
    lab = tile_process(url, _label, tile_shape=tiles, write_to=out, compute=True)
    oracle = ndi.label(img)[0]
    assert same_partition(lab, oracle)
    back = zarr.open_array(out, mode="r")[...]  # through zarr's fsspec store, not ours
    assert same_partition(back, oracle)
    assert zarr.open_array(out, mode="r").attrs["blockbuster"]["complete"] is True
    # the staging sat next to the output in the same bucket and is gone after success
    keys = _all_objects(s3_bucket)
    assert not [k for k in keys if "blockbuster-staging" in k]
    # merge_tile_labels reads per-tile labels from s3:// too
    per_tile = f"{s3_bucket}/per_tile.zarr"
    z = zarr.create_array(store=per_tile, shape=shape, chunks=tiles, dtype="u4")
    z[...] = np.asarray(
        __import__("dask.array", fromlist=["x"])
        .from_array(img, chunks=tiles)
        .map_blocks(lambda b: ndi.label(b)[0].astype("u4"), dtype="u4")
    )
    merged = merge_tile_labels(per_tile, write_to=f"{s3_bucket}/merged.zarr", compute=True)
    assert same_partition(merged, oracle)


@pytest.mark.slow
def test_deployment_with_a_bucket_prefix_as_data_root(s3_bucket, client):
    """Deployments: a URL prefix is a data root with the folders' rules; the default
    output lands next to the image in the store; another prefix is refused untouched."""
    from blockbuster.deploy import Settings, prepare_segment, run_segment
    from blockbuster.errors import PathNotAllowedError

    img = blobs((64, 96), seed=5)
    url = f"{s3_bucket}/raw/acq/img.zarr"
    zarr.create_array(store=url, shape=img.shape, chunks=(32, 32), dtype="u1")[...] = img
    other = f"{s3_bucket}/rawdata/img.zarr"  # shares the root's characters, not its folder
    zarr.create_array(store=other, shape=img.shape, chunks=(32, 32), dtype="u1")[...] = img
    settings = Settings(data_roots=(f"{s3_bucket}/raw",))
    seg = {"name": "threshold", "options": {"threshold": 0}}
    req = prepare_segment(url, seg, tiling={"tile_shape": [32, 32]}, settings=settings)
    assert req.output == url + ".labels.zarr"
    result = run_segment(req)
    assert result["status"] == "segmented"
    assert same_partition(zarr.open_array(req.output, mode="r")[...], ndi.label(img > 0)[0])
    assert run_segment(req)["status"] == "already-segmented"
    before = _all_objects(s3_bucket)
    for image, output in [
        (other, None),
        (url, f"{s3_bucket}/elsewhere/labels.zarr"),
        (url, f"{s3_bucket}/raw/../elsewhere/labels.zarr"),
    ]:
        with pytest.raises(PathNotAllowedError):
            prepare_segment(image, seg, output=output, settings=settings)
    assert _all_objects(s3_bucket) == before


@pytest.mark.slow
def test_ngff_labels_inside_ome_zarr_on_s3(s3_bucket, client):
    img = blobs((96, 80), seed=1)
    cyx = np.stack([img, np.zeros_like(img)]).astype(np.uint16)
    ome = _write_ome(f"{s3_bucket}/img.zarr", cyx)
    out = f"{ome}/labels/cells"
    lab = tile_process(ome, FirstChannelLabel(), tile_shape=(32, 32), write_to=out, compute=True)
    assert same_partition(lab, ndi.label(img)[0])

    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    nodes = list(Reader(parse_url(ome))())  # from the image on S3, as napari does
    label_nodes = [n for n in nodes if n.load(Label)]
    assert len(label_nodes) == 1
    node = label_nodes[0]
    assert node.metadata["name"] == "cells"
    assert [tuple(d.shape) for d in node.data] == [(96, 80), (48, 40)]
    assert same_partition(np.asarray(node.data[0]), lab)
    assert zarr.open_group(f"{ome}/labels", mode="r").attrs["ome"]["labels"] == ["cells"]
    # the staging stayed out of the image
    assert not [k for k in _all_objects(s3_bucket) if k.startswith("img.zarr/.")]


def test_default_staging_next_to_url_output():
    from blockbuster.api import _default_staging

    assert (
        _default_staging("s3://b/res/labels.zarr") == "s3://b/res/.labels.zarr.blockbuster-staging"
    )
    assert (
        _default_staging("s3://b/x/img.zarr/labels/cells")
        == "s3://b/x/.img.zarr-labels-cells.blockbuster-staging"
    )
    assert _default_staging("s3://b/out.zarr") == "s3://b/.out.zarr.blockbuster-staging"


def test_urls_are_never_local_folders(tmp_path, monkeypatch):
    """An s3:// output used to become a local folder named 's3:'."""
    monkeypatch.chdir(tmp_path)
    from blockbuster.io import OutputTarget

    assert OutputTarget("s3://b/labels.zarr").path == "s3://b/labels.zarr"
    assert not os.path.exists(tmp_path / "s3:")


@pytest.mark.slow
def test_storage_options_reach_the_workers(s3_server, s3_bucket, client, monkeypatch):
    """No AWS settings in the environment of the driver or the workers: the endpoint and
    credentials come from ``storage_options=`` alone (sent by a worker plugin)."""
    from blockbuster.io import set_storage_options

    img = blobs((64, 48), seed=9)
    url = f"{s3_bucket}/img.zarr"
    zarr.create_array(store=url, shape=img.shape, chunks=(32, 24), dtype="u1")[...] = img
    hidden = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    for k in hidden:
        monkeypatch.delenv(k)
    client.run(lambda: [os.environ.pop(k, None) for k in hidden])
    opts = {
        "endpoint": s3_server.endpoint,
        "access_key_id": "testing",
        "secret_access_key": "testing",
        "region": "us-east-1",
    }
    try:
        lab = tile_process(
            url,
            _label,
            tile_shape=(32, 24),
            write_to=f"{s3_bucket}/out.zarr",
            storage_options=opts,
            compute=True,
        )
        assert same_partition(lab, ndi.label(img)[0])
    finally:
        env = s3_server.env
        client.run(lambda: os.environ.update(env))
        set_storage_options(f"{s3_bucket}", None)


DRIVER = """
import sys
sys.path.insert(0, {tests!r})
from faults import FaultyLabel
from blockbuster import tile_process
tile_process({path!r}, FaultyLabel({calls!r}, {calls!r}, delay=0.25), tile_shape=(20, 20),
             write_to={out!r}, staging={stg!r})
"""


@pytest.mark.slow
def test_driver_sigkilled_resumes_from_s3_staging(s3_bucket, tmp_path, client, prefect_api_url):
    """Image, output and staging on S3; the driver (and every process it started) is
    SIGKILLed mid-run; the rerun calls fn only on the tiles no staging object holds.

    Prefect path: the driver reports to the session's server (it started a temporary
    server on a fresh, unmigrated home before: ~20 CPU s)."""
    from faults import FaultyLabel, kill_driver_once_staged, marked_image

    img = marked_image()
    path = f"{s3_bucket}/img.zarr"
    zarr.create_array(store=path, shape=img.shape, chunks=(20, 20), dtype=img.dtype)[...] = img
    out, stg = f"{s3_bucket}/out.zarr", f"{s3_bucket}/stg"
    calls = tmp_path / "calls"
    calls.mkdir()
    script = tmp_path / "driver.py"
    tests = os.path.dirname(__file__)
    script.write_text(DRIVER.format(tests=tests, path=path, calls=str(calls), out=out, stg=stg))
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": prefect_api_url,
    }
    finished = kill_driver_once_staged(script, env, stg, 10, poll=0.2)
    assert 10 <= finished < 36
    before = FaultyLabel(str(calls)).n_calls()
    fn = FaultyLabel(str(calls))
    lab = tile_process(path, fn, tile_shape=(20, 20), write_to=out, staging=stg, compute=True)
    assert fn.n_calls() - before == 36 - finished
    assert same_partition(lab, ndi.label(img > 0)[0])


@pytest.mark.slow
def test_separate_dask_worker_processes(s3_server, s3_bucket, tmp_path):
    """`dask scheduler` and two `dask worker` processes, each in its own temporary
    directory, connected by address; image, staging and output in S3. The driver sees
    none of the workers' files and they see none of its."""
    import subprocess
    import sys
    import time

    from distributed import Client

    img = blobs((80, 72), seed=11)
    url = f"{s3_bucket}/img.zarr"
    zarr.create_array(store=url, shape=img.shape, chunks=(24, 24), dtype="u1")[...] = img
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(here)
    dirs = {name: tmp_path / name for name in ("scheduler", "w1", "w2")}
    for d in dirs.values():
        d.mkdir()
    sched_file = dirs["scheduler"] / "scheduler.json"
    base_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "DASK_", "TMP", "TEMP"))
    }
    procs = []

    def start(name, args):
        env = {
            **base_env,
            **s3_server.env,
            "TMPDIR": str(dirs[name]),
            "PYTHONPATH": os.pathsep.join([repo, here]),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_" + args[0], *args[1:]],
                cwd=dirs[name],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    try:
        start(
            "scheduler",
            [
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(sched_file),
            ],
        )
        t0 = time.monotonic()
        while not sched_file.exists() and time.monotonic() - t0 < 120:
            time.sleep(0.2)
        address = __import__("json").loads(sched_file.read_text())["address"]
        for w in ("w1", "w2"):
            start(
                w,
                [
                    "worker",
                    address,
                    "--nthreads",
                    "1",
                    "--nworkers",
                    "1",
                    "--no-dashboard",
                    "--local-directory",
                    str(dirs[w]),
                    "--host",
                    "127.0.0.1",
                ],
            )
        with Client(address, set_as_default=False) as c:
            c.wait_for_workers(2, timeout=120)
            local = c.run(lambda dask_worker: dask_worker.local_directory)
            assert (
                sorted(str(dirs[w]) in d for d in local.values() for w in ("w1", "w2")).count(True)
                == 2
            )
            with c.as_current():
                lab = tile_process(
                    url,
                    _label,
                    tile_shape=(24, 24),
                    write_to=f"{s3_bucket}/out.zarr",
                    compute=True,
                )
        assert same_partition(lab, ndi.label(img)[0])
        assert same_partition(zarr.open_array(f"{s3_bucket}/out.zarr")[...], ndi.label(img)[0])
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_shards_are_put_whole_into_an_object_store(s3_bucket, monkeypatch):
    """A merge with units writes its output sharded, one shard per unit: into an object
    store each shard is one PUT of the whole shard (zarr-python's own write reads the
    shard back first, a GET per shard, as for any partial write). Read back through
    zarr's fsspec store (not ours), the array holds what was written, absent inner
    chunks as the fill value."""
    from blockbuster.io import ShardWriter
    from blockbuster.io._places import local_store

    url = f"{s3_bucket}/sharded.zarr"
    arr = zarr.create_array(
        store=local_store(url),
        shape=(6, 8),
        chunks=(2, 2),
        shards=(4, 4),
        dtype="u2",
        fill_value=0,
    )
    writer = ShardWriter.of(arr)
    assert writer is not None
    store_type = type(arr.store_path.store)
    gets = []
    real_get = store_type.get

    async def counted_get(self, key, *a, **k):
        gets.append(key)
        return await real_get(self, key, *a, **k)

    monkeypatch.setattr(store_type, "get", counted_get)
    want = np.zeros((6, 8), "u2")
    for coords in [(0, 0), (1, 1)]:
        shard = writer.shard(coords)
        for r in range(coords[0] * 4, min(coords[0] * 4 + 4, 6), 2):
            for c in range(coords[1] * 4, coords[1] * 4 + 4, 2):
                if (r + c) % 4 == 0:  # some inner chunks left absent
                    block = np.full((2, 2), r * 8 + c + 1, "u2")
                    shard.add(((r, r + 2), (c, c + 2)), block)
                    want[r : r + 2, c : c + 2] = block
        shard.close()
    assert gets == []
    monkeypatch.setattr(store_type, "get", real_get)
    back = zarr.open_array(url, mode="r")[...]  # zarr's fsspec store reads the shards
    assert np.array_equal(back, want)

"""The default call (no client of the user's, ``compute=True``): one local cluster per
process, a user's client never replaced, and a fast read-back that equals the stored
labels (zarr v2, v3, sharded v3, NGFF labels)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr
from conftest import CountingLabel, blobs, same_partition

from blockbuster.io import LabelReader, read_labels

# -- one cluster per process ----------------------------------------------------------

TWO_CALLS = textwrap.dedent("""
    import json, os, sys
    import numpy as np, scipy.ndimage as ndi, psutil
    import blockbuster
    from blockbuster import tile_process, merge_tile_labels
    from blockbuster.cluster import shared_cluster_info, start_local_cluster

    def label(tile):
        return ndi.label(tile > 0)[0]

    img = np.zeros((96, 96), np.uint8)
    img[10:90, 40:60] = 1
    seen = []
    for i in range(2):
        lab, summary = tile_process(img, label, tile_shape=(32, 32), compute=True,
                                    return_summary=True)
        if i == 0:  # what the run held per tile, once the caller drops the summary
            import weakref
            held = [weakref.ref(summary["tiles"]), weakref.ref(summary["seams"])]
        del summary
        info = shared_cluster_info()
        workers = start_local_cluster().client().run(os.getpid)  # the one there is
        kids = sorted(workers.values())
        seen.append({"labels": int(np.unique(lab).size - 1), "info": info, "kids": kids})
    import gc, time
    time.sleep(1)  # the first run's last reports (its reporter thread) are sent
    gc.collect()
    kept = [r() is not None for r in held]
    merged = merge_tile_labels(lab.astype("int32"), tile_shape=(32, 32), compute=True)
    seen.append({"labels": int(np.unique(merged).size - 1), "info": shared_cluster_info()})
    try:
        from distributed import default_client
        default_client()
        default = True
    except ValueError:
        default = False
    closed = blockbuster.close_local_cluster()
    left = [p for p in seen[0]["kids"] if psutil.pid_exists(p)
            and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    print("RESULT " + json.dumps({"seen": seen, "default": default, "closed": closed,
                                  "kept": kept,
                                  "after": shared_cluster_info(), "left": left}))
""")


@pytest.mark.timeout(300)
def test_two_calls_start_one_cluster(tmp_path, prefect_harness):
    """Two tile_process calls and a merge in one process (no client): one cluster,
    started once, the same scheduler and worker processes for all three calls; it is not
    the default client; close_local_cluster() stops its processes; the first call's
    per-tile records are freed once its caller drops the summary."""
    from prefect.settings import PREFECT_API_URL

    script = tmp_path / "two_calls.py"
    script.write_text(TWO_CALLS)
    env = dict(os.environ)
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()  # the harness's server: no start
    env["PREFECT_HOME"] = str(tmp_path / "ph")
    import blockbuster

    root = os.path.dirname(os.path.dirname(os.path.abspath(blockbuster.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    r = subprocess.run(
        [sys.executable, str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        cwd=tmp_path,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT ") :])
    first, second, merged = res["seen"]
    assert first["labels"] == second["labels"] == merged["labels"] == 1
    assert first["info"]["started"] == second["info"]["started"] == 1, res
    assert merged["info"]["started"] == 1, res
    assert first["info"]["scheduler"] == second["info"]["scheduler"]
    assert merged["info"]["scheduler"] == first["info"]["scheduler"]
    assert first["kids"] == second["kids"] and len(first["kids"]) >= 1, res
    assert res["default"] is False  # our client is not the user's default client
    assert res["closed"] is True and res["after"] is None
    assert res["left"] == [], res  # the worker processes are gone
    # the first run's records and seams are freed with its summary: the call keeps
    # nothing per tile (a context Prefect keeps for the process may hold the run's Job)
    assert res["kept"] == [False, False], res
    assert "Traceback" not in out, out


def test_user_client_is_used_and_kept(client, tmp_path):
    """With a client of the user's, tile_process runs there (fn calls in its worker
    processes), starts no cluster of its own, and leaves the client the default one."""
    from distributed import default_client

    from blockbuster import tile_process
    from blockbuster.cluster import shared_cluster_info

    assert default_client() is client
    d = tmp_path / "calls"
    d.mkdir()
    fn = CountingLabel(str(d))
    img = blobs((64, 64), seed=3)
    lab = tile_process(img, fn, tile_shape=(32, 32), compute=True)
    import scipy.ndimage as ndi

    assert same_partition(lab, ndi.label(img)[0])
    assert shared_cluster_info() is None
    assert default_client() is client and client.status == "running"
    workers = set(client.run(os.getpid).values())
    pids = {int(name.split("-")[0]) for name in os.listdir(d)}
    assert len(pids) >= 1 and pids <= workers


# -- read-back ---------------------------------------------------------------------------


def _labels(shape, seed=0):
    import scipy.ndimage as ndi

    return ndi.label(blobs(shape, seed=seed))[0].astype(np.uint32)


@pytest.mark.parametrize(
    "kind",
    ["v3", "v2", "v2-nested", "v3-gzip", "sharded", "sharded-start", "fallback-v2-F"],
)
@pytest.mark.parametrize("shape,chunks", [((100, 70), (16, 32)), ((9, 20, 33), (4, 8, 8))])
def test_read_labels_equals_zarr(tmp_path, kind, shape, chunks):
    """read_labels (NumPy and lazy) equals zarr-python's own read, for every layout the
    direct path handles and one it does not; edge chunks and absent chunks included."""
    from zarr.codecs import GzipCodec, ShardingCodec

    lab = _labels(shape)
    lab[: chunks[0]] = 0  # whole chunks of fill value: not stored
    path = str(tmp_path / f"{kind}.zarr")
    kw = {}
    if kind.startswith("v2") or kind == "fallback-v2-F":
        kw["zarr_format"] = 2
    if kind == "v2-nested":
        kw["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
    if kind == "v3-gzip":
        kw["compressors"] = GzipCodec()
    if kind == "sharded":
        kw["shards"] = tuple(c * 2 for c in chunks)
    if kind == "fallback-v2-F":
        kw["order"] = "F"
    if kind == "sharded-start":
        z = zarr.create_array(
            store=path,
            shape=shape,
            dtype="u4",
            fill_value=0,
            chunks=tuple(c * 2 for c in chunks),
            serializer=ShardingCodec(chunk_shape=chunks, index_location="start"),
            compressors=None,
        )
    else:
        z = zarr.create_array(
            store=path, shape=shape, chunks=chunks, dtype="u4", fill_value=0, **kw
        )
    z[...] = lab
    stored = zarr.open_array(path, mode="r")[...]
    assert (stored == lab).all()
    reader = LabelReader(path)
    assert reader.fast == (kind != "fallback-v2-F")
    got = read_labels(path, compute=True, threads=3)
    assert got.dtype == stored.dtype and (got == stored).all()
    lazy = read_labels(path, compute=False)
    assert lazy.dtype == stored.dtype and (lazy.compute() == stored).all()
    assert (lazy[3:50, 5:].compute() == stored[3:50, 5:]).all()
    # a region not aligned to chunks
    assert (reader[2:7, 1:19] == stored[2:7, 1:19]).all()


def test_lazy_read_back_has_one_task_per_group(tmp_path):
    """1024 chunks read as a handful of dask tasks (groups of chunks), not one each."""
    path = str(tmp_path / "many.zarr")
    lab = _labels((512, 512), seed=1)
    z = zarr.create_array(store=path, shape=lab.shape, chunks=(16, 16), dtype="u4", fill_value=0)
    z[...] = lab
    lazy = read_labels(path, compute=False)
    n_tasks = len(lazy.__dask_graph__()) - 1  # the reader object is one key
    assert 1 <= lazy.npartitions <= 4 and n_tasks == lazy.npartitions
    assert (lazy.compute() == lab).all()


@pytest.fixture
def ome_image(tmp_path):
    """A small OME-Zarr 0.5 image (zarr v3) of blobs, chunks 32 x 32."""
    path = tmp_path / "img.zarr"
    img = blobs((96, 80), seed=5) * 200
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    a = g.create_array("0", shape=img.shape, dtype="uint8", chunks=(32, 32))
    a[...] = img
    g.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
                "datasets": [
                    {
                        "path": "0",
                        "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0]}],
                    }
                ],
            }
        ],
    }
    return str(path), img


def _label(tile):
    import scipy.ndimage as ndi

    return ndi.label(tile > 100)[0]


@pytest.mark.parametrize("output", ["v3", "v2", "ngff"])
def test_returned_labels_equal_stored(client, tmp_path, ome_image, output):
    """What tile_process returns (compute=True and the lazy array) is what it stored:
    zarr v3, zarr v2, and NGFF labels inside the OME-Zarr image."""
    import scipy.ndimage as ndi

    from blockbuster import tile_process

    image, img = ome_image
    write_to = {
        "v3": str(tmp_path / "out3.zarr"),
        "v2": str(tmp_path / "out2.zarr"),
        "ngff": os.path.join(image, "labels", "cells"),
    }[output]
    kw = {"zarr_format": 2} if output == "v2" else {}
    got = tile_process(image, _label, tile_shape=(32, 32), write_to=write_to, compute=True, **kw)
    level0 = os.path.join(write_to, "0") if output == "ngff" else write_to
    stored = zarr.open_array(level0, mode="r")
    assert stored.metadata.zarr_format == (2 if output == "v2" else 3)
    assert got.dtype == stored.dtype and (got == stored[...]).all()
    assert same_partition(got, ndi.label(img > 100)[0])
    lazy = tile_process(image, _label, tile_shape=(32, 32), write_to=write_to, **kw)
    assert (lazy.compute() == stored[...]).all()


def test_merge_sharded_output_read_back(client, tmp_path):
    """A merge of small stored tiles writes a sharded output (merge units); what it
    returns equals what zarr-python reads from it."""
    import scipy.ndimage as ndi

    from blockbuster import merge_tile_labels

    binary = blobs((256, 256), seed=7)
    per_tile = np.zeros(binary.shape, np.int32)
    for i in range(0, 256, 32):
        for j in range(0, 256, 32):
            per_tile[i : i + 32, j : j + 32] = ndi.label(binary[i : i + 32, j : j + 32])[0]
    src = str(tmp_path / "tiles.zarr")
    z = zarr.create_array(store=src, shape=per_tile.shape, chunks=(32, 32), dtype="i4")
    z[...] = per_tile
    out = str(tmp_path / "merged.zarr")
    got = merge_tile_labels(src, write_to=out, compute=True)
    stored = zarr.open_array(out, mode="r")
    assert stored.shards is not None  # merge units: the sharded layout is what is tested
    assert LabelReader(out).fast
    assert (got == stored[...]).all()
    assert same_partition(got, ndi.label(binary)[0])


@pytest.mark.parametrize("forkserver", ["true", "false"])
def test_local_cluster_workers_see_the_environment_as_it_is_now(monkeypatch, forkserver):
    """blockbuster's own cluster forks its workers from a forkserver (started with the
    first cluster; BLOCKBUSTER_WORKER_FORKSERVER=false: spawned by their nanny in this
    process, Dask's default). Either way a worker sees this process's environment as it
    is when the cluster starts: a variable set after the forkserver started (credentials,
    an endpoint) reaches the next cluster's workers."""
    from blockbuster.cluster import make_local_cluster

    monkeypatch.setenv("BLOCKBUSTER_WORKER_FORKSERVER", forkserver)
    client, cluster = make_local_cluster(n_workers=1)
    try:
        parents = set(client.run(os.getppid).values())
    finally:
        client.close()
        cluster.close()
    assert (parents == {os.getpid()}) is (forkserver == "false")
    monkeypatch.setenv("BLOCKBUSTER_TEST_SET_LATER", "now")
    client, cluster = make_local_cluster(n_workers=1)
    try:
        seen = client.run(lambda: os.environ.get("BLOCKBUSTER_TEST_SET_LATER"))
    finally:
        client.close()
        cluster.close()
    assert list(seen.values()) == ["now"]


@pytest.mark.parametrize(
    "platform, method, setting, forked",
    [
        ("linux", "spawn", "true", True),
        ("darwin", "spawn", "true", False),  # macOS keeps Dask's spawn
        ("win32", "spawn", "true", False),
        ("linux", "fork", "true", False),  # the user's own choice is kept
        ("linux", "spawn", "false", False),
    ],
)
def test_workers_are_forked_from_a_forkserver_only_on_linux_by_default(
    monkeypatch, platform, method, setting, forked
):
    """Where blockbuster's own cluster forks its workers: Linux, when neither the user's
    Dask configuration nor BLOCKBUSTER_WORKER_FORKSERVER says otherwise (macOS: forking
    after numpy's import ran LAPACK in the forkserver is what Python's spawn default
    there avoids)."""
    import multiprocessing

    import dask

    from blockbuster.cluster._local import _worker_start

    if "forkserver" not in multiprocessing.get_all_start_methods():  # pragma: no cover
        pytest.skip("no forkserver here")
    key = "distributed.worker.multiprocessing-method"
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setenv("BLOCKBUSTER_WORKER_FORKSERVER", setting)
    with dask.config.set({key: method}):
        with _worker_start() as got:
            inside = dask.config.get(key)
        assert dask.config.get(key) == method  # restored
    assert got is forked
    assert inside == ("forkserver" if forked else method)


@pytest.mark.parametrize("what", ["tile_process", "merge of stored labels"])
def test_compute_without_write_to_relabels_into_the_returned_array(client, tmp_path, what):
    """compute=True and no write_to: the caller wants an array and no store, so the
    relabel stage fills the array it returns (no output chunk is encoded, written, read
    back); the labels equal the whole-image oracle and, id for id, what the same call
    stores when it writes a store (compute=False)."""
    import scipy.ndimage as ndi

    from blockbuster import merge_tile_labels, tile_process

    binary = blobs((160, 192), seed=11)
    if what == "tile_process":
        args: tuple = (binary.astype(np.uint8) * 200, _label)
        run = tile_process
        kw: dict = {"tile_shape": (64, 64)}
    else:  # read back from the stored per-tile labels in the relabel stage
        per_tile = np.zeros(binary.shape, np.int32)
        for i in range(0, 160, 64):
            for j in range(0, 192, 64):
                per_tile[i : i + 64, j : j + 64] = ndi.label(binary[i : i + 64, j : j + 64])[0]
        src = str(tmp_path / "tiles.zarr")
        zarr.create_array(store=src, shape=per_tile.shape, chunks=(64, 64), dtype="i4")[...] = (
            per_tile
        )
        args, run, kw = (src,), merge_tile_labels, {}
    got, summary = run(*args, compute=True, return_summary=True, **kw)
    assert summary["output"] is None  # nothing was stored
    assert isinstance(got, np.ndarray) and got.shape == binary.shape
    assert same_partition(got, ndi.label(binary)[0])
    lazy, stored = run(*args, return_summary=True, **kw)
    assert os.path.isdir(stored["output"])
    assert got.dtype == lazy.dtype and (got == lazy.compute()).all()


def test_only_a_small_returned_array_is_mapped_ahead(client, monkeypatch):
    """The array a compute=True call returns is made and its pages mapped while the
    tiles are segmented only up to PREPARE_MAX_BYTES: a large, mostly empty result
    would hold all its memory from the start. Either way the labels are the oracle's."""
    import scipy.ndimage as ndi

    import blockbuster.tasks._relabel as relabel
    from blockbuster import tile_process

    made = []
    real = relabel.touched_zeros
    monkeypatch.setattr(relabel, "touched_zeros", lambda *a: made.append(a) or real(*a))
    binary = blobs((160, 192), seed=12)
    for limit, mapped_ahead in ((relabel.PREPARE_MAX_BYTES, True), (160 * 192 * 4 - 1, False)):
        monkeypatch.setattr(relabel, "PREPARE_MAX_BYTES", limit)
        made.clear()
        got = tile_process(
            binary.astype(np.uint8) * 200, _label, tile_shape=(64, 64), compute=True
        )
        assert bool(made) is mapped_ahead
        assert same_partition(got, ndi.label(binary)[0])


def _count_fsyncs(on: bool) -> int:
    """In this worker process: count ``os.fsync`` calls from now (``on``), or stop
    counting; returns the count so far."""
    real = getattr(os.fsync, "real", os.fsync)
    count = getattr(os.fsync, "count", [0])
    if on:
        count = [0]

        def counted(fd):
            count[0] += 1
            return real(fd)

        counted.real, counted.count = real, count  # type: ignore[attr-defined]
        os.fsync = counted
        return 0
    os.fsync = real
    return count[0]


def test_a_call_without_write_to_fsyncs_nothing_on_the_workers(client, tmp_path):
    """The default call's staging and output are in a temporary folder removed at exit:
    its workers fsync none of the packs they stage (RunPlan.durable reaches them); with
    write_to they do (the oracle that the count sees the workers' fsyncs)."""
    from blockbuster import tile_process

    img = blobs((64, 96), seed=5)
    fsyncs = {}
    for case in ("write_to", "default"):
        kwargs = {"write_to": str(tmp_path / "out.zarr")} if case == "write_to" else {}
        client.run(_count_fsyncs, True)
        try:
            lab = tile_process(
                img, CountingLabel(str(tmp_path)), tile_shape=(32, 32), compute=True, **kwargs
            )
        finally:
            fsyncs[case] = sum(client.run(_count_fsyncs, False).values())
        assert same_partition(np.asarray(lab), ndi_label(img))
    assert fsyncs["write_to"] > 0 and fsyncs["default"] == 0, fsyncs


def ndi_label(img: np.ndarray) -> np.ndarray:
    import scipy.ndimage as ndi

    return ndi.label(img > 0)[0]


def test_the_returned_array_is_freed_once_the_caller_drops_it(client):
    """compute=True without write_to relabels into an array in this process: the call
    hands it over and keeps no reference (the run's Job can outlive the call in Prefect's
    context), so a notebook that drops the labels gets the memory back."""
    import gc
    import time
    import weakref

    from blockbuster import tile_process

    img = blobs((128, 128), seed=3).astype(np.uint8) * 200
    got = tile_process(img, _label, tile_shape=(64, 64), compute=True)
    assert same_partition(got, ndi_label(img))
    ref = weakref.ref(got)
    del got
    time.sleep(1)  # the run's last reports (reporter thread) are sent
    gc.collect()
    assert ref() is None, "the returned labels are still referenced after the call"


def test_a_call_without_write_to_persists_no_stage_results(client, tmp_path):
    """The default call's staging is temporary, so no later run can resume from its
    cached stage results: none is written (Prefect's result files cost ~10 ms a call).
    With write_to, the same stages are cached (the oracle that the listing sees them).
    ``keep_staging=True`` keeps whatever a run wrote, so the default call's listing would
    show its results had it written any."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from blockbuster import tile_process

    img = blobs((64, 96), seed=7)
    found = {}
    for case in ("write_to", "default"):
        results = tmp_path / f"results-{case}"
        kwargs = {"write_to": str(tmp_path / "out.zarr")} if case == "write_to" else {}
        with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: results}):
            lab = tile_process(
                img, ndi_label, tile_shape=(32, 32), compute=True, keep_staging=True, **kwargs
            )
        assert same_partition(np.asarray(lab), ndi_label(img))
        found[case] = sorted(os.listdir(results)) if results.is_dir() else []
    assert any(n.startswith("blockbuster-segment-") for n in found["write_to"]), found
    assert any(n.startswith("blockbuster-table-") for n in found["write_to"]), found
    assert found["default"] == [], found

"""The GPU path on a machine without GPUs: NVML answers are replaced by fixed values (the
one stand-in allowed: hardware CI lacks), everything else is real (clusters of worker
processes, CUDA_VISIBLE_DEVICES as CUDA reads it)."""

from __future__ import annotations

import logging

import pytest

from blockbuster.cluster import _gpus, gpu_layout, make_local_cluster, visible_gpus
from blockbuster.errors import NoGPUError

GiB = 1 << 30


def _dev(i, uuid, name="NVIDIA A100-SXM4-80GB", free=70, mig=()):
    return {
        "index": i,
        "uuid": uuid,
        "name": name,
        "memory_total": 80 * GiB,
        "memory_free": free * GiB,
        "pci_bus_id": f"0000:{i:02x}:00.0",
        "mig": list(mig),
    }


MIGS = [
    {"uuid": "MIG-1111aaaa", "gi": 1, "ci": 0, "memory_total": 10 * GiB, "memory_free": 9 * GiB},
    {"uuid": "MIG-2222bbbb", "gi": 2, "ci": 0, "memory_total": 20 * GiB, "memory_free": 19 * GiB},
]
DEVICES = [
    _dev(0, "GPU-0a0a0a0a-1111"),
    _dev(1, "GPU-1b1b1b1b-2222", free=30),
    _dev(2, "GPU-2c2c2c2c-3333", mig=MIGS),
]


def uuids(env):
    return [g["uuid"] for g in visible_gpus(DEVICES, env=env)]


def test_cuda_visible_devices_as_cuda_reads_it(caplog):
    # unset: every GPU, a MIG-mode GPU as its instances
    assert uuids({}) == ["GPU-0a0a0a0a-1111", "GPU-1b1b1b1b-2222", "MIG-1111aaaa", "MIG-2222bbbb"]
    # set but empty: none (it was read as "all GPUs")
    assert uuids({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert uuids({"CUDA_VISIBLE_DEVICES": " , "}) == []
    # indices (PCI order), in the order given
    assert uuids({"CUDA_VISIBLE_DEVICES": "1,0"}) == ["GPU-1b1b1b1b-2222", "GPU-0a0a0a0a-1111"]
    # GPU UUIDs, whole or a unique prefix (they gave "no GPU")
    assert uuids({"CUDA_VISIBLE_DEVICES": "GPU-1b1b1b1b-2222"}) == ["GPU-1b1b1b1b-2222"]
    assert uuids({"CUDA_VISIBLE_DEVICES": "GPU-0a0a"}) == ["GPU-0a0a0a0a-1111"]
    # MIG instances: the new and the old (MIG-GPU-<uuid>/<gi>/<ci>) forms
    assert uuids({"CUDA_VISIBLE_DEVICES": "MIG-2222bbbb"}) == ["MIG-2222bbbb"]
    assert uuids({"CUDA_VISIBLE_DEVICES": "MIG-GPU-2c2c2c2c-3333/1/0"}) == ["MIG-1111aaaa"]
    mig = visible_gpus(DEVICES, env={"CUDA_VISIBLE_DEVICES": "MIG-1111aaaa"})[0]
    assert mig["memory_free"] == 9 * GiB and mig["mig"]["parent"] == "GPU-2c2c2c2c-3333"
    # CUDA stops at the first entry it cannot resolve: an ambiguous prefix, a bad index
    with caplog.at_level(logging.WARNING, logger="blockbuster"):
        assert uuids({"CUDA_VISIBLE_DEVICES": "0,GPU-,1"}) == ["GPU-0a0a0a0a-1111"]
        assert uuids({"CUDA_VISIBLE_DEVICES": "7,0"}) == []
    assert "names no GPU" in caplog.text
    # mixed models with indices and CUDA's default (fastest-first) order: a warning
    mixed = [_dev(0, "GPU-a", name="T4"), _dev(1, "GPU-b")]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="blockbuster"):
        visible_gpus(mixed, env={"CUDA_VISIBLE_DEVICES": "1"})
    assert "PCI_BUS_ID" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="blockbuster"):
        visible_gpus(mixed, env={"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    assert "PCI_BUS_ID" not in caplog.text


def test_gpu_layout_host_memory_per_gpu_and_cpu_workers_for_the_rest():
    gpus = visible_gpus(DEVICES[:2], env={})
    layout = gpu_layout(gpus, cpus=16, memory_bytes=100 * GiB)
    gw = [w for w in layout if w["kind"] == "gpu"]
    cw = [w for w in layout if w["kind"] == "cpu"]
    assert [w["env"]["CUDA_VISIBLE_DEVICES"] for w in gw] == [g["uuid"] for g in gpus]
    assert all(w["env"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" for w in gw)
    assert all(w["resources"] == {"GPU": 1} and w["nthreads"] == 1 for w in gw)
    assert len(cw) == 16 - 2 * 2  # two cores per GPU worker, the rest CPU workers
    assert all(not w["resources"] and w["env"]["CUDA_VISIBLE_DEVICES"] == "" for w in cw)
    # host memory per GPU: half of 90 % between the GPU workers, not a per-core share
    assert gw[0]["memory_limit"] == int(90 * GiB * 0.5 / 2)
    assert cw[0]["memory_limit"] == int(90 * GiB * 0.5 / 12)
    assert gw[0]["memory_limit"] > 5 * cw[0]["memory_limit"]
    # eight GPUs on 16 cores: no cores left, the GPU workers get all the memory
    eight = [_dev(i, f"GPU-{i}") for i in range(8)]
    layout = gpu_layout(visible_gpus(eight, env={}), cpus=16, memory_bytes=128 * GiB)
    assert len(layout) == 8 + 8 and sum(w["kind"] == "gpu" for w in layout) == 8
    layout = gpu_layout(visible_gpus(eight, env={}), cpus=8, memory_bytes=128 * GiB)
    assert len(layout) == 8 and layout[0]["memory_limit"] == int(128 * GiB * 0.9 / 8)
    # several processes per GPU: each asks GPU=1 and is pinned to the same GPU
    two = gpu_layout(gpus[:1], cpus=16, memory_bytes=100 * GiB, workers_per_gpu=2)
    assert [w["env"]["CUDA_VISIBLE_DEVICES"] for w in two if w["kind"] == "gpu"] == [
        gpus[0]["uuid"]
    ] * 2


def test_no_gpu_is_a_clear_error_whatever_the_host(nvml, monkeypatch):
    with pytest.raises(NoGPUError, match="no GPU is visible"):
        make_local_cluster(use_gpu=True)
    nvml.extend(DEVICES[:2])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(NoGPUError, match="set but empty"):
        make_local_cluster(use_gpu=True)


@pytest.fixture(scope="module")
def stand_in_gpu_cluster():
    """make_local_cluster(use_gpu=True) with two stand-in GPUs (NVML answers fixed; the
    workers are real processes) and one CPU worker."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_gpus, "nvml_devices", lambda: list(DEVICES[:2]))
        mp.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        client, cluster = make_local_cluster(use_gpu=True, cpu_workers=1, memory_bytes=8 * GiB)
    try:
        client.wait_for_workers(3, timeout=120)
        yield client
    finally:
        client.close()
        cluster.close()


def test_gpu_cluster_layout_started_for_real(stand_in_gpu_cluster):
    """Real worker processes: each GPU worker pinned by UUID with GPU=1 and host memory
    per GPU, one CPU worker without the resource and without a GPU."""
    client = stand_in_gpu_cluster
    info = client.scheduler_info()["workers"]
    env = client.run(
        lambda: {
            k: __import__("os").environ.get(k)
            for k in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")
        }
    )
    by_name = {w["name"]: (addr, w) for addr, w in info.items()}
    assert sorted(by_name) == ["cpu-0", "gpu-0", "gpu-1"]
    for name, uuid in (("gpu-0", DEVICES[0]["uuid"]), ("gpu-1", DEVICES[1]["uuid"])):
        addr, w = by_name[name]
        assert w["resources"] == {"GPU": 1} and w["nthreads"] == 1
        assert w["memory_limit"] == int(8 * GiB * 0.9 * 0.5 / 2)
        assert env[addr] == {"CUDA_VISIBLE_DEVICES": uuid, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    addr, w = by_name["cpu-0"]
    assert not w.get("resources") and env[addr]["CUDA_VISIBLE_DEVICES"] == ""


class GpuLabel:
    """A tile function that declares it needs a GPU; records which process ran it."""

    uses_gpu = True

    def __init__(self, calls_dir: str):
        self.calls_dir = calls_dir

    def __call__(self, tile):
        import os

        import scipy.ndimage as ndi

        with open(os.path.join(self.calls_dir, f"{os.getpid()}-{uuid4()}"), "w"):
            pass
        return ndi.label(tile > 0)[0]


def uuid4():
    import uuid

    return uuid.uuid4().hex


def test_gpu_function_runs_on_gpu_workers_only(stand_in_gpu_cluster, prefect_harness, tmp_path):
    """A uses_gpu function on a cluster with GPU workers: every tile on a GPU worker
    (Dask's GPU resource), never on the CPU worker; the labels are whole-image labels."""
    import numpy as np
    import scipy.ndimage as ndi

    from blockbuster import tile_process
    from tests.conftest import same_partition

    client = stand_in_gpu_cluster
    calls = tmp_path / "calls"
    calls.mkdir()
    img = np.zeros((64, 64), np.uint8)
    img[5:50, 20:24] = 1
    img[30:34, 2:60] = 1
    with client.as_current():
        lab = tile_process(img, GpuLabel(str(calls)), tile_shape=(16, 16), compute=True)
    assert same_partition(lab, ndi.label(img)[0])
    pids = {int(f.split("-")[0]) for f in __import__("os").listdir(calls)}
    names = {w["name"]: a for a, w in client.scheduler_info()["workers"].items()}
    worker_pids = client.run(__import__("os").getpid)
    gpu_pids = {worker_pids[names["gpu-0"]], worker_pids[names["gpu-1"]]}
    assert len(__import__("os").listdir(calls)) == 16
    assert pids <= gpu_pids and worker_pids[names["cpu-0"]] not in pids


def test_gpu_function_refused_on_a_cluster_without_gpus(tmp_path):
    """An existing cluster whose workers have no GPU (CUDA_VISIBLE_DEVICES empty there):
    refused before fn runs or anything is written."""
    import numpy as np
    from distributed import Client, LocalCluster

    calls = tmp_path / "calls"
    calls.mkdir()
    out = tmp_path / "out.zarr"
    cluster = LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        dashboard_address=":0",
        env={"CUDA_VISIBLE_DEVICES": ""},
        silence_logs=logging.ERROR,
    )
    client = Client(cluster, set_as_default=False)
    try:
        from blockbuster import tile_process

        with client.as_current(), pytest.raises(NoGPUError, match="no GPU worker"):
            tile_process(
                np.ones((32, 32), np.uint8),
                GpuLabel(str(calls)),
                tile_shape=(16, 16),
                write_to=str(out),
            )
    finally:
        client.close()
        cluster.close()
    assert not any(calls.iterdir()) and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calls"]  # no staging either


def test_gpu_function_refused_on_a_cpu_machine_before_any_model_loads(tmp_path):
    """No client, no GPU (CUDA_VISIBLE_DEVICES empty: no GPU on any host): the headline
    cellpose_fn(gpu=True) call is refused in the driver; PyTorch is never imported, no
    model loads, no cluster starts and nothing is written."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "labels.zarr"
    code = f"""
import json, sys, numpy as np
from blockbuster import tile_process
from blockbuster.errors import NoGPUError
from blockbuster.plugins.cellpose import cellpose_fn, model_loads
fn = cellpose_fn("cyto3", gpu=True, diameter=30)
try:
    tile_process(np.ones((1, 64, 64), np.uint16), fn, tile_shape=(1, 32, 32), overlap=20,
                 write_to={str(out)!r})
    err = None
except NoGPUError as e:
    err = str(e)
import distributed
print(json.dumps({{"error": err, "torch": "torch" in sys.modules,
                  "cellpose": "cellpose" in sys.modules, "loads": model_loads(),
                  "clients": len(distributed.client._global_clients)}}))
"""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.getcwd()}
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["error"] and "declares that it needs a GPU" in got["error"]
    assert "CUDA_VISIBLE_DEVICES is set but empty" in got["error"]
    assert not got["torch"] and not got["cellpose"] and got["loads"] == 0
    assert got["clients"] == 0
    assert list(tmp_path.iterdir()) == []


def _fits(t, shape, chunks, limits):
    """True when tile ``t`` is within every limit ``(bytes_per_voxel, budget)`` and
    the voxel cap (no halo here)."""
    import math

    v = math.prod(t)
    return all(bpv * v <= budget for bpv, budget in limits)


def _maximal(t, shape, chunks, limits, planes):
    """No axis can take one more doubling step (chunk-aligned) and still fit."""
    import math

    for d in range(len(shape)):
        if t[d] >= shape[d] or (planes and d == 0):
            continue
        c = list(t)
        c[d] = min(shape[d], math.ceil(min(shape[d], t[d] * 2) / chunks[d]) * chunks[d])
        if _fits(c, shape, chunks, limits):
            return False
    return True


@pytest.mark.parametrize("planes", [True, False])
@pytest.mark.parametrize("binding", ["gpu", "host", "cap"])
def test_auto_tile_shape_for_gpus(planes, binding):
    """The largest chunk-aligned tile under both limits (GPU memory left after the
    model, the GPU worker's host memory) and the 64 Mi voxel cap; a plane-by-plane
    function keeps z = 1, a 3D one grows z."""
    from blockbuster.core import GPU_MAX_TILE_VOXELS, auto_tile_shape

    shape, chunks = (64, 16384, 16384), (8, 1024, 1024)
    host, gpu = {"gpu": (64 * GiB, 2 * GiB), "host": (2 * GiB, 64 * GiB)}.get(
        binding, (256 * GiB, 256 * GiB)
    )
    t, why = auto_tile_shape(
        shape,
        chunks,
        itemsize=2,
        memory_bytes=host,
        memory_factor=35,
        gpu_bytes=gpu,
        gpu_memory_factor=20,
        max_voxels=GPU_MAX_TILE_VOXELS,
        plane_by_plane=planes,
    )
    limits = [(2 * 36 + 12, host * 0.5), (2 * 20, gpu * 0.8), (1, GPU_MAX_TILE_VOXELS)]
    eff_chunks = (1,) + chunks[1:] if planes else chunks
    assert _fits(t, shape, eff_chunks, limits)
    assert _maximal(t, shape, eff_chunks, limits, planes)
    assert why["limited_by"] == {"gpu": "GPU memory", "host": "worker memory"}.get(
        binding, "max_voxels"
    )
    assert (t[0] == 1) == planes
    assert all(a % c == 0 for a, c in zip(t[1:], chunks[1:]))


def test_choose_tile_shape_reads_gpu_memory_and_declarations(nvml, tmp_path):
    """tile_shape='auto' with a GPU function and no cluster: this machine's GPUs (NVML
    stand-in) minus the declared model part, the host memory a GPU worker would get."""

    from blockbuster.api import choose_tile_shape
    from blockbuster.io import open_image

    nvml.append(_dev(0, "GPU-solo", free=5))

    class PlaneFn:
        uses_gpu = True
        plane_by_plane = True
        memory_factor = 35.0
        gpu_memory_factor = 20.0
        gpu_model_bytes = 3 * GiB

        def __call__(self, t):
            return t

    import zarr

    path = str(tmp_path / "img.zarr")  # metadata only: no chunk is written
    zarr.create_array(store=path, shape=(32, 8192, 8192), chunks=(4, 1024, 1024), dtype="u2")
    src = open_image(path)
    t, why = choose_tile_shape(src, PlaneFn(), 20, True)
    assert why["gpu_bytes"] == 2 * GiB  # 5 GiB free - 3 GiB for the model
    assert t[0] == 1 and why["plane_by_plane"]
    assert (t[1] + 40) * (t[2] + 40) * 2 * 20 <= 0.8 * 2 * GiB  # halo in-plane only
    assert "GPU worker" in why["memory_source"]
    assert t[1] % 1024 == 0 and t[2] % 1024 == 0
    assert why["working_set_bytes"] <= why["budget_bytes"]  # the host limit holds too
    assert why["limited_by"] in (why["gpu_memory_source"], why["memory_source"])


def _sleep_batch(i):
    import time

    time.sleep(0.3)
    return i


def test_batches_in_flight_follow_workers_joining():
    """A cluster the user started with one GPU worker up: as more join, the window of
    batches in flight grows (it was fixed from the workers present at the start)."""
    from distributed import Client, LocalCluster

    from blockbuster.cluster import StageWork, slots

    cluster = LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        resources={"GPU": 1},
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    )
    client = Client(cluster, set_as_default=False)
    res = {"GPU": 1}
    windows: list[int] = []
    try:
        with client.as_current():
            work = StageWork.submit(
                client,
                _sleep_batch,
                [[i] for i in range(24)],
                lambda b: lambda: (b[0],),
                name="window",
                window=lambda: 2 * slots(client, res) + 2,
                resources=res,
            )
            work.run.recheck_s = 0.0
            assert work.run.window == 4  # one GPU worker
            cluster.scale(2)

            def done(i, _):
                if not windows:  # the next completion sees the second worker
                    client.wait_for_workers(2, timeout=120)
                windows.append(work.run.window)

            assert work.gather(done) == list(range(24))
        assert max(windows) == 2 * 2 + 2  # the second worker counted once it joined
    finally:
        client.close()
        cluster.close()


class OomUntil:
    """A GPU tile function that runs out of GPU memory (PyTorch's real error class)
    while its batch is larger than ``fits``; ``with_smaller_batch`` halves it."""

    uses_gpu = True
    gpu_memory_factor = 20.0
    gpu_model_bytes = 1 << 30

    def __init__(self, batch_size: int, fits: int, tried: list):
        self.batch_size, self.fits, self.tried = batch_size, fits, tried

    def __call__(self, tile):
        import numpy as np

        self.tried.append(self.batch_size)
        if self.batch_size > self.fits:
            raise _oom_error()("CUDA out of memory. Tried to allocate 2.00 GiB")
        return np.ones(tile.shape, np.int32)

    def with_smaller_batch(self):
        if self.batch_size <= 1:
            return None
        return OomUntil(self.batch_size // 2, self.fits, self.tried)


def _oom_error():
    try:
        import torch

        return torch.cuda.OutOfMemoryError
    except ImportError:  # the message alone is recognised too
        return RuntimeError


def test_cuda_out_of_memory_retries_with_a_smaller_batch_then_names_the_tile():
    import numpy as np

    from blockbuster.errors import TileFunctionError
    from blockbuster.worker import call_fn

    data = np.zeros((1, 256, 256), np.uint16)
    tried: list = []
    out, _, attempts = call_fn(OomUntil(16, 4, tried), data, 7, (0, 0, 0), 2, 0.0)
    assert tried == [16, 8, 4] and attempts == 3 and out.shape == data.shape
    # never fits: down to a batch of one, then a clear error naming tile and memory
    tried.clear()
    with pytest.raises(TileFunctionError) as e:
        call_fn(OomUntil(8, 0, tried), data, 7, (3, 0, 0), 2, 0.0)
    assert tried == [8, 4, 2, 1]  # not the 3 identical retries of a transient error
    msg = str(e.value)
    assert "out of GPU memory on tile 7" in msg and "origin (3, 0, 0)" in msg
    need = (data.nbytes * 20 + (1 << 30)) / 2**30
    assert f"needs about {need:.1f} GiB of GPU memory" in msg and "tile_shape" in msg
    assert e.value.tile_index == 7

    # a function without a smaller batch: once more after freeing the cache, then fail
    calls = []

    def plain(tile):
        calls.append(1)
        raise _oom_error()("CUDA out of memory. Tried to allocate 8.00 GiB")

    with pytest.raises(TileFunctionError, match="out of GPU memory on tile 2"):
        call_fn(plain, data, 2, (0, 0, 0), 5, 0.0)
    assert len(calls) == 2


def test_cellpose_batch_size_for_the_gpu_and_smaller_after_oom():
    from blockbuster.plugins.cellpose import cellpose_fn, choose_batch_size

    assert choose_batch_size(None) == 8  # Cellpose's default without a GPU to measure
    assert choose_batch_size(80 << 30) == 64 and choose_batch_size(2 << 30) == 16
    fn = cellpose_fn("cyto3", gpu=True, batch_size=32)
    assert fn.batch_size == 32
    smaller = fn.with_smaller_batch()
    assert smaller.batch_size == 16 and smaller.cache_token() != "" and smaller.gpu
    one = cellpose_fn("cyto3", gpu=True, batch_size=1)
    assert one.with_smaller_batch() is None


def test_gpu_batch_reads_ahead_and_writes_behind(tmp_path, monkeypatch):
    """In a segment batch of a GPU function the next tile is read while fn runs, and
    staged tiles are written by another thread; what is staged is what the plain loop
    stages."""
    import dataclasses
    import threading

    import numpy as np
    import scipy.ndimage as ndi
    import zarr

    from blockbuster.core import make_plan
    from blockbuster.io import Staging, open_image
    from blockbuster.worker import PREVIEW_FIELD, segment_tiles

    path = str(tmp_path / "img.zarr")
    img = np.zeros((4, 32, 32), np.uint8)
    img[:, 4:12, 4:12] = 1
    img[1:3, 20:30, 15:25] = 2
    zarr.create_array(store=path, shape=img.shape, chunks=(1, 32, 32), dtype="u1")[...] = img
    src = open_image(path)
    asked = [threading.Event() for _ in range(4)]

    class Reader:
        def read(self, region):
            asked[region[0].start].set()
            return src.reader.read(region)

    class GpuFn:
        uses_gpu = True

        def __init__(self):
            self.overlapped = None

        def __call__(self, tile):
            if self.overlapped is None:  # tile 0: is tile 1 being read meanwhile?
                self.overlapped = asked[1].wait(timeout=10)
            return ndi.label(tile > 0)[0]

    threads: list[str] = []
    write = Staging.write_tile

    def spy(self, n, record, arrays=None):
        threads.append(threading.current_thread().name)
        return write(self, n, record, arrays)

    monkeypatch.setattr(Staging, "write_tile", spy)

    def run(fn, where):
        plan = make_plan(src, fn_id="f", tile_shape=(1, 32, 32))
        plan = dataclasses.replace(plan, staging_root=str(tmp_path / where))
        st = Staging(plan.staging_root)
        st.prepare({"run_key": plan.run_key})
        # the preview's samples (every 2nd pixel of plane 2) come back with the records
        recs = segment_tiles(plan, fn, [0, 1, 2, 3], reader=Reader(), preview=(2, 2))
        return recs, {n: st.read_tile(n)[1].get("labels") for n in range(4)}

    fn = GpuFn()
    recs, staged = run(fn, "gpu")
    assert fn.overlapped is True
    assert len(threads) == 4 and all(t.startswith("blockbuster-write-behind") for t in threads)
    assert [r["tile"] for r in recs] == [0, 1, 2, 3]
    threads.clear()
    plain_recs, plain = run(lambda t: ndi.label(t > 0)[0], "cpu")
    assert not any(t.startswith("blockbuster-write-behind") for t in threads)
    assert [r["n_labels"] for r in recs] == [r["n_labels"] for r in plain_recs] == [1, 2, 2, 1]
    for n in range(4):
        assert np.array_equal(staged[n], plain[n])
    for rs in (recs, plain_recs):  # both paths: only the tile holding plane 2 is sampled
        assert [PREVIEW_FIELD in r for r in rs] == [False, False, True, False]
        at, pixels = rs[2][PREVIEW_FIELD]
        assert at == (0, 0) and np.array_equal(pixels, img[2, ::2, ::2])


def test_integer_overlap_skips_one_plane_axes(tmp_path):
    """(In-process: no cluster, no Prefect.) tile_shape=(1, Y, X) with overlap=int: fn receives one-plane blocks with an in-plane
    halo (a 2D function is given 2D work), and a per-axis overlap overrides the rule."""
    import numpy as np

    from blockbuster.core import TileGrid, make_plan
    from blockbuster.io import open_image
    from blockbuster.worker import run_locally

    img = np.zeros((8, 40, 40), np.uint8)
    img[:, 5:30, 5:30] = 1
    src = open_image(img)
    seen: list[tuple[int, ...]] = []

    def record(tile):
        seen.append(tile.shape)
        return (tile > 0).astype(np.int32)

    plan = make_plan(src, fn_id="record", tile_shape=(1, 16, 16), overlap=5)
    assert plan.grid.overlap == (0, 5, 5)
    run_locally(plan, src, record, str(tmp_path / "a"))
    g = TileGrid((8, 40, 40), (1, 16, 16), (0, 5, 5))
    assert sorted(seen) == sorted(g.ext_shape(n) for n in range(g.n_tiles))
    assert {s[0] for s in seen} == {1} and max(s[1] for s in seen) == 16 + 2 * 5
    # tiles thicker than one plane keep the halo along every axis
    assert make_plan(src, fn_id="record", tile_shape=(2, 16, 16), overlap=5).grid.overlap == (
        5,
        5,
        5,
    )
    seen.clear()
    plan = make_plan(src, fn_id="record", tile_shape=(1, 16, 16), overlap=(2, 5, 5))
    run_locally(plan, src, record, str(tmp_path / "b"))
    assert max(s[0] for s in seen) == 5  # the explicit z halo: 1 + 2 + 2 planes

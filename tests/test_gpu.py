"""The GPU path on a machine without GPUs: NVML answers are replaced by fixed values (the
one stand-in allowed: hardware CI lacks), everything else is real (clusters of worker
processes, CUDA_VISIBLE_DEVICES as CUDA reads it)."""

from __future__ import annotations

import logging

import pytest

from blockbuster.cluster import gpu_layout, make_local_cluster, visible_gpus
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


def test_gpu_cluster_layout_started_for_real(nvml):
    """make_local_cluster(use_gpu=True) with two stand-in GPUs: real worker processes,
    each GPU worker pinned by UUID with GPU=1 and host memory per GPU, one CPU worker."""
    nvml.extend(DEVICES[:2])
    client, cluster = make_local_cluster(use_gpu=True, cpu_workers=1, memory_bytes=8 * GiB)
    try:
        client.wait_for_workers(3, timeout=120)
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
    finally:
        client.close()
        cluster.close()

"""What a local cluster is sized from: dask's CPU count (affinity, cgroups), the memory
available now capped by distributed's limit, and a SLURM allocation, which neither dask
nor distributed reads."""

from __future__ import annotations

import psutil
from dask.system import cpu_count

from blockbuster.cluster import allocation


def test_without_slurm_the_machine_decides(monkeypatch):
    for v in (
        "SLURM_CPUS_PER_TASK",
        "SLURM_CPUS_ON_NODE",
        "SLURM_MEM_PER_NODE",
        "SLURM_MEM_PER_CPU",
    ):
        monkeypatch.delenv(v, raising=False)
    a = allocation()
    assert a["cpus"] == cpu_count()
    assert 0 < a["memory_bytes"] <= psutil.virtual_memory().total


def test_a_slurm_allocation_narrows_cpus_and_memory(monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "100")  # MiB
    a = allocation()
    assert a["cpus"] == 1 and a["memory_bytes"] == 100 * 1024**2
    assert "SLURM_CPUS_PER_TASK" in a["source"] and "SLURM_MEM_PER_NODE" in a["source"]
    monkeypatch.delenv("SLURM_MEM_PER_NODE")
    monkeypatch.setenv("SLURM_MEM_PER_CPU", "64")
    assert allocation()["memory_bytes"] == 64 * 1024**2

"""Dask clusters for blockbuster: sizing, GPUs, and checks on the client in use.

``tile_process`` runs on the current ``distributed.Client`` when there is one (any Dask
cluster: local, SLURM through dask-jobqueue, Kubernetes), else it uses the process's
local cluster of processes sized to this machine's allocation (:mod:`._shared`: started
by the first call, reused by the next, closed at exit).

Examples
--------
>>> from blockbuster.cluster import allocation
>>> a = allocation()
>>> a["cpus"] >= 1 and a["memory_bytes"] > 0
True
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import sys
from collections.abc import Iterator
from typing import Any

import psutil

from blockbuster.errors import ClusterError, NoGPUError

from ._gpus import gpu_layout, visible_gpus

__all__ = [
    "make_local_cluster",
    "allocation",
    "gpu_info",
    "no_gpu_message",
    "check_client",
    "client_threads",
]

log = logging.getLogger("blockbuster")


def allocation() -> dict[str, Any]:
    """CPUs and memory this process may use: SLURM allocation, cgroup limits, affinity.

    CPUs: :func:`dask.system.cpu_count` (affinity and cgroup quotas, v1 and v2), then a
    SLURM allocation (``SLURM_CPUS_PER_TASK`` / ``SLURM_CPUS_ON_NODE``), which dask does
    not read. Memory: what is available now (psutil), capped by
    :func:`distributed.system.memory_limit` (cgroup limits and ``RLIMIT_RSS``, less what
    this process already holds) and by a SLURM allocation (``SLURM_MEM_PER_NODE``,
    ``SLURM_MEM_PER_CPU``), which distributed does not read.

    Returns a dict with ``cpus``, ``memory_bytes`` and ``source`` (what decided them).
    """
    from dask.system import cpu_count
    from distributed.system import memory_limit

    source = ["dask.system.cpu_count (affinity, cgroup)"]
    cpus = cpu_count()
    slurm_cpus = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE")
    if slurm_cpus and slurm_cpus.isdigit() and int(slurm_cpus) < cpus:
        cpus = int(slurm_cpus)
        source.append("SLURM_CPUS_PER_TASK")
    vm = psutil.virtual_memory()
    mem = vm.available
    source.append("psutil available memory")
    limit = memory_limit()
    if limit < vm.total:  # a cgroup or rlimit applies
        free = max(limit - psutil.Process().memory_info().rss, 1)
        if free < mem:
            mem = free
            source.append("distributed.system.memory_limit (cgroup, rlimit)")
    slurm_mem = os.environ.get("SLURM_MEM_PER_NODE")
    if slurm_mem and slurm_mem.isdigit():
        mem = min(mem, int(slurm_mem) * 1024**2)
        source.append("SLURM_MEM_PER_NODE")
    slurm_mpc = os.environ.get("SLURM_MEM_PER_CPU")
    if slurm_mpc and slurm_mpc.isdigit():
        mem = min(mem, int(slurm_mpc) * 1024**2 * cpus)
        source.append("SLURM_MEM_PER_CPU")
    return {"cpus": int(max(1, cpus)), "memory_bytes": int(mem), "source": source}


def gpu_info() -> list[dict[str, Any]]:
    """The GPUs (or MIG instances) this process may use, with free memory (NVML).

    ``CUDA_VISIBLE_DEVICES`` is resolved as CUDA does (indices in PCI bus order, UUIDs,
    MIG instances; set but empty means none): see :func:`visible_gpus`. An empty list
    when nvidia-ml-py is not installed or no driver answers.
    """
    return visible_gpus()


def _dashboard_address() -> str:
    """A free port: never the fixed 8787, which a second cluster would fight over."""
    return ":0"


def make_local_cluster(use_gpu: bool | str = False, **kwargs):
    """Start a local Dask cluster of processes and a client to it.

    Parameters
    ----------
    use_gpu : bool or "auto"
        False: a CPU cluster with one single-threaded worker process per allocated CPU
        and the allocation's memory split between them. True: the GPU layout of
        :func:`~blockbuster.cluster.gpu_layout` (docs/gpu.md): per visible GPU (or MIG
        instance) ``workers_per_gpu`` single-threaded workers pinned by UUID through
        ``CUDA_VISIBLE_DEVICES`` (``CUDA_DEVICE_ORDER=PCI_BUS_ID``), offering the Dask
        resource ``GPU=1``, with host memory per GPU; CPU workers on the remaining
        cores. The same with or without dask-cuda. Raises
        :class:`~blockbuster.errors.NoGPUError` when no GPU is visible. "auto": GPUs
        when there are any, else the CPU cluster (and says so in the log).
    **kwargs
        CPU cluster: passed to ``LocalCluster`` (e.g. ``n_workers``, ``memory_limit``).
        GPU cluster: ``workers_per_gpu`` (default 1), ``cpu_workers`` (default: the
        cores left), ``memory_bytes`` (default: the allocation's); the rest goes to
        ``SpecCluster``.

    Returns
    -------
    (distributed.Client, cluster)

    Examples
    --------
    >>> client, cluster = make_local_cluster(n_workers=1)  # doctest: +SKIP
    >>> client.close(); cluster.close()                      # doctest: +SKIP
    """
    from distributed import Client

    cluster = _start_cluster(use_gpu, **kwargs)
    return Client(cluster), cluster


def _start_cluster(use_gpu: bool | str = False, **kwargs):
    """The cluster of :func:`make_local_cluster`, without a client (the caller makes the
    one it needs: blockbuster's shared cluster makes one that is not the default)."""
    from distributed import LocalCluster

    if use_gpu not in (False, True, "auto"):
        raise ClusterError(f"use_gpu={use_gpu!r} must be False, True or 'auto'")
    if kwargs.get("processes") is False:
        raise ClusterError(
            "make_local_cluster(processes=False) is not supported: tile "
            "functions must run in worker processes; drop processes=False"
        )
    gpus = gpu_info() if use_gpu else []
    if use_gpu is True and not gpus:
        raise NoGPUError(no_gpu_message("use_gpu=True"))
    if use_gpu == "auto" and not gpus:
        log.warning("use_gpu='auto': no GPU visible, starting a CPU cluster instead")
    if gpus:
        return _gpu_cluster(gpus, **kwargs)
    alloc = allocation()
    n = kwargs.pop("n_workers", alloc["cpus"])
    kwargs.setdefault("threads_per_worker", 1)
    kwargs.setdefault(
        "memory_limit", max(int(alloc["memory_bytes"] * 0.9 / max(n, 1)), 256 * 1024**2)
    )
    kwargs.setdefault("dashboard_address", _dashboard_address())
    kwargs.setdefault("processes", True)
    kwargs.setdefault("silence_logs", logging.ERROR)
    _quiet_distributed()
    with _worker_start() as forked:
        if forked:
            kwargs["env"] = _current_environment(kwargs.get("env"))
        return LocalCluster(n_workers=n, **kwargs)


#: What the forkserver imports once, so that each worker forked from it starts with it:
#: the worker side of distributed and of blockbuster (numpy, scipy.ndimage, zarr, the
#: tile and staging code). Nothing that starts threads or a GPU context at import
#: (no torch, no CUDA): a GPU is chosen per worker after the fork.
FORKSERVER_PRELOAD = ["distributed.nanny", "distributed.worker", "blockbuster.worker"]


@contextlib.contextmanager
def _worker_start() -> Iterator[bool]:
    """Start the worker processes of a cluster made here from a forkserver.

    Dask starts each worker process as a fresh interpreter (``spawn``), which then
    imports distributed, numpy, scipy, zarr and blockbuster: on 2 cores, two workers
    doing that beside the caller took 2-3.5 s before the first tile ran. Forked from a
    forkserver that imported them once, the workers are ready in ~1 s
    (docs/benchmarks.md, section 9). Only for clusters blockbuster starts, only while
    they start (a worker restarted later by its nanny is spawned as Dask does), only on
    Linux (macOS has a forkserver too, but forking after numpy's import, which runs
    LAPACK there to check Accelerate, is what Python's ``spawn`` default on macOS
    avoids; not measured there either), only where the user has not chosen a start
    method (``distributed.worker.multiprocessing-method`` other than ``spawn``), and
    not with ``BLOCKBUSTER_WORKER_FORKSERVER=false``. Environment variables that distributed sets
    before a worker starts (``OMP_NUM_THREADS=1`` ...) reach the forkserver: it starts
    with the first worker, after distributed set them. Yields whether it is used: then
    each worker must be given this process's environment as it is now (the forkserver
    holds the one it started with; see :func:`_current_environment`).
    """
    import dask

    from blockbuster.config import runtime_settings

    key = "distributed.worker.multiprocessing-method"
    if (
        not runtime_settings().worker_forkserver
        or dask.config.get(key, "spawn") != "spawn"
        or not sys.platform.startswith("linux")
        or "forkserver" not in multiprocessing.get_all_start_methods()
    ):
        yield False
        return
    import distributed.utils as du

    # distributed would preload every package it knows of (pandas, ...), importing each
    # in this process first; the worker needs only these
    if not getattr(du, "_forkserver_preload_set", True):
        multiprocessing.get_context("forkserver").set_forkserver_preload(FORKSERVER_PRELOAD)
        du._forkserver_preload_set = True
    with dask.config.set({key: "forkserver"}):
        yield True


def _current_environment(env: dict[str, str] | None) -> dict[str, str]:
    """This process's environment now, with ``env`` on top: for a worker forked from the
    forkserver, which would otherwise see the environment the forkserver started with
    (credentials or ``AWS_ENDPOINT_URL`` set since then would not reach it). Set in the
    worker before it starts (distributed's nanny ``env``)."""
    return {**os.environ, **(env or {})}


def _quiet_distributed() -> None:
    """Cluster start/stop chatter is not news for users of a cluster we start for them."""
    lg = logging.getLogger("distributed")
    if lg.getEffectiveLevel() < logging.WARNING:
        lg.setLevel(logging.WARNING)


def no_gpu_message(what: str) -> str:
    """Why no GPU is visible here, and the fix, for an error that needs one."""
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None and not cvd.strip():
        why = "CUDA_VISIBLE_DEVICES is set but empty, which means no GPU"
    else:
        try:
            import pynvml  # noqa: F401

            why = "nvidia-ml-py found none (check the driver and CUDA_VISIBLE_DEVICES)"
        except ImportError:
            why = "nvidia-ml-py (the 'gpu' extra: pip install 'blockbuster[gpu]') is not installed"
    return (
        f"{what} but no GPU is visible on this machine: {why}. Run on a machine with an "
        "NVIDIA GPU, or pass use_gpu='auto' to fall back to the CPU"
    )


def _gpu_cluster(gpus, **kwargs):
    from distributed import Nanny, Scheduler, SpecCluster

    alloc = allocation()
    layout = gpu_layout(
        gpus,
        cpus=alloc["cpus"],
        memory_bytes=int(kwargs.pop("memory_bytes", alloc["memory_bytes"])),
        workers_per_gpu=int(kwargs.pop("workers_per_gpu", 1)),
        cpu_workers=kwargs.pop("cpu_workers", None),
    )
    _quiet_distributed()
    workers = {
        w["name"]: {
            "cls": Nanny,
            "options": {
                "nthreads": w["nthreads"],
                "memory_limit": w["memory_limit"],
                "resources": w["resources"] or None,
                "env": w["env"],
                "silence_logs": logging.ERROR,
            },
        }
        for w in layout
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": _dashboard_address()}}
    kwargs.setdefault("silence_logs", logging.ERROR)
    with _worker_start() as forked:
        if forked:
            for spec in workers.values():
                opts = spec["options"]
                opts["env"] = _current_environment(opts["env"])  # type: ignore[index]
        cluster = SpecCluster(workers=workers, scheduler=scheduler, **kwargs)
    return cluster


def check_client(client) -> None:
    """Refuse clients whose workers share the driver process (``processes=False``)."""
    pids = client.run(os.getpid)
    if not pids:
        raise ClusterError(
            "the Dask cluster has no workers; start some or pass none and "
            "let blockbuster start a local cluster"
        )
    if os.getpid() in set(pids.values()):
        raise ClusterError(
            "the current Dask client runs its workers inside this process "
            "(LocalCluster(processes=False) or Client(processes=False)); tile functions "
            "must run in worker processes: create it with processes=True, or close it and "
            "let blockbuster start a local cluster"
        )


def client_threads(client) -> int:
    info = (
        client.scheduler_info(n_workers=-1)
        if _accepts_n_workers(client)
        else client.scheduler_info()
    )
    return max(1, sum(w.get("nthreads", 1) for w in info.get("workers", {}).values()))


def _accepts_n_workers(client) -> bool:
    import inspect

    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


_NO_SHIELD = False


def _shield_main_script():
    """Keep worker processes from re-running the user's script.

    Worker processes are started with ``spawn``, which re-imports a script's main module
    (``python script.py``) in every child; a script that calls ``tile_process`` at top
    level, without an ``if __name__ == "__main__":`` guard, would then start clusters
    from inside the workers. Giving ``__main__`` a module spec named ``__main__`` makes
    multiprocessing skip that re-import (as for an interactive session). Tile functions
    defined in the script still reach the workers: cloudpickle sends them by value.
    Returns what to restore.
    """
    import sys

    main = sys.modules.get("__main__")
    if (
        main is None
        or getattr(main, "__spec__", None) is not None
        or not getattr(main, "__file__", None)
    ):
        return _NO_SHIELD
    from importlib.machinery import ModuleSpec

    main.__spec__ = ModuleSpec("__main__", None)
    return None


def _unshield_main_script(previous) -> None:
    import sys

    if previous is _NO_SHIELD:
        return
    main = sys.modules.get("__main__")
    if main is not None:
        main.__spec__ = previous


def _quiet_teardown() -> None:
    """In a worker of a cluster blockbuster started and is closing: no error logs from
    the shutdown itself. A worker's heartbeat can race the scheduler's close and log
    "Failed to communicate with scheduler during heartbeat" with a traceback, on a run
    that succeeded (seen on the 2-core CI machine)."""
    for name in (
        "distributed.worker",
        "distributed.core",
        "distributed.comm",
        "distributed.batched",
    ):
        logging.getLogger(name).setLevel(logging.CRITICAL)

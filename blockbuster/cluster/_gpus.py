"""GPUs: which ones a process may use, and how a local GPU cluster is laid out.

Discovery reads NVML (``nvidia-ml-py``, the ``gpu`` extra) and resolves
``CUDA_VISIBLE_DEVICES`` as CUDA does:

- unset: every GPU; set but empty (``CUDA_VISIBLE_DEVICES=""``): **none**;
- entries are NVML indices (PCI bus order), GPU UUIDs (``GPU-8f6c...``, a unique prefix
  is enough) or MIG instances (``MIG-<uuid>`` or the older ``MIG-GPU-<uuid>/<gi>/<ci>``);
- CUDA stops at the first entry it cannot resolve, and so does this module.

Indices are read in PCI bus order, NVML's order. CUDA's own default order is
fastest-first, which can differ on a machine with mixed GPUs, so every worker
blockbuster starts gets ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` and is pinned by UUID, never by
index. A GPU with MIG enabled offers its MIG instances, one GPU each (a CUDA process can
use one MIG instance only).

:func:`gpu_layout` is the default local GPU cluster (docs/gpu.md): per GPU (or MIG
instance) ``workers_per_gpu`` single-threaded worker processes, pinned to it, each
offering the Dask resource ``GPU=1`` and host memory per GPU; CPU workers on the cores
left over, for reading, decoding, the seam scan and the relabel.

Examples
--------
>>> devices = [{"index": 0, "uuid": "GPU-aaaa", "name": "A100", "memory_total": 80 << 30,
...             "memory_free": 79 << 30, "pci_bus_id": "0000:07:00.0", "mig": []}]
>>> [g["uuid"] for g in visible_gpus(devices, env={})]
['GPU-aaaa']
>>> visible_gpus(devices, env={"CUDA_VISIBLE_DEVICES": ""})
[]
>>> layout = gpu_layout(visible_gpus(devices, env={}), cpus=16, memory_bytes=128 << 30)
>>> [w["name"] for w in layout][:2], len(layout)
(['gpu-0', 'cpu-0'], 15)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "nvml_devices",
    "parse_visible_devices",
    "visible_gpus",
    "gpu_layout",
    "worker_gpus",
    "declares_gpu",
    "gpu_worker_memory",
    "gpu_workers",
    "check_gpu_client",
    "GPU_RESOURCE",
]

log = logging.getLogger("blockbuster")

#: The Dask resource GPU workers offer and GPU work asks for.
GPU_RESOURCE = "GPU"


def nvml_devices() -> list[dict[str, Any]]:
    """Every GPU NVML sees, in NVML (PCI bus) order, ignoring ``CUDA_VISIBLE_DEVICES``.

    Each entry: ``index``, ``uuid``, ``name``, ``memory_total``, ``memory_free``,
    ``pci_bus_id`` and ``mig`` (the MIG instances of a GPU in MIG mode: ``uuid``,
    ``gi``, ``ci``, ``memory_total``, ``memory_free``; empty otherwise). An empty list
    when nvidia-ml-py is not installed or no driver answers.
    """
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:
        return []

    def text(v) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            m = pynvml.nvmlDeviceGetMemoryInfo(h)
            try:
                bus = text(pynvml.nvmlDeviceGetPciInfo(h).busId)
            except Exception:  # pragma: no cover - needs hardware
                bus = ""
            migs = []
            try:
                current, _ = pynvml.nvmlDeviceGetMigMode(h)
            except Exception:  # no MIG support on this GPU
                current = 0
            if current:  # pragma: no cover - needs a MIG-capable GPU
                for k in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(h)):
                    try:
                        mh = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, k)
                    except Exception:
                        continue
                    mm = pynvml.nvmlDeviceGetMemoryInfo(mh)
                    migs.append(
                        {
                            "uuid": text(pynvml.nvmlDeviceGetUUID(mh)),
                            "gi": int(pynvml.nvmlDeviceGetGpuInstanceId(mh)),
                            "ci": int(pynvml.nvmlDeviceGetComputeInstanceId(mh)),
                            "memory_total": int(mm.total),
                            "memory_free": int(mm.free),
                        }
                    )
            out.append(
                {
                    "index": i,
                    "uuid": text(pynvml.nvmlDeviceGetUUID(h)),
                    "name": text(pynvml.nvmlDeviceGetName(h)),
                    "memory_total": int(m.total),
                    "memory_free": int(m.free),
                    "pci_bus_id": bus,
                    "mig": migs,
                }
            )
        return out
    except Exception as exc:  # pragma: no cover - a driver error mid-way
        log.warning("reading GPUs through NVML failed: %s", exc)
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def parse_visible_devices(value: str | None) -> list[str] | None:
    """The entries of a ``CUDA_VISIBLE_DEVICES`` value: None when unset (every GPU), an
    empty list when set but empty (no GPU), else the stripped entries in order.

    Examples
    --------
    >>> parse_visible_devices(None) is None, parse_visible_devices(" ")
    (True, [])
    >>> parse_visible_devices("1, GPU-8f6c,MIG-GPU-8f6c/1/0")
    ['1', 'GPU-8f6c', 'MIG-GPU-8f6c/1/0']
    """
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def _units(dev: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What CUDA offers of one NVML device: the GPU, or its MIG instances."""
    base = {"index": dev["index"], "name": dev["name"], "pci_bus_id": dev.get("pci_bus_id", "")}
    migs = dev.get("mig") or []
    if not migs:
        return [
            {
                **base,
                "uuid": dev["uuid"],
                "memory_total": int(dev["memory_total"]),
                "memory_free": int(dev["memory_free"]),
                "mig": None,
            }
        ]
    return [
        {
            **base,
            "uuid": m["uuid"],
            "name": f"{dev['name']} MIG {m.get('gi')}/{m.get('ci')}",
            "memory_total": int(m["memory_total"]),
            "memory_free": int(m["memory_free"]),
            "mig": {"parent": dev["uuid"], "gi": m.get("gi"), "ci": m.get("ci")},
        }
        for m in migs
    ]


def _resolve(entry: str, devices: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]] | None:
    """The GPU(s) one ``CUDA_VISIBLE_DEVICES`` entry names, or None when it names none."""
    if entry.isdigit():
        i = int(entry)
        return _units(devices[i]) if i < len(devices) else None
    if entry.startswith("MIG-GPU-") and entry.count("/") == 2:  # MIG-GPU-<uuid>/<gi>/<ci>
        parent, gi, ci = entry[len("MIG-") :].split("/")
        for d in devices:
            if d["uuid"] == parent:
                for u in _units(d):
                    m = u["mig"] or {}
                    if str(m.get("gi")) == gi and str(m.get("ci")) == ci:
                        return [u]
        return None
    if entry.startswith("MIG-"):
        hits = [u for d in devices for u in _units(d) if u["mig"] and u["uuid"].startswith(entry)]
        return hits if len(hits) == 1 else None
    if entry.startswith("GPU-"):
        gpus = [d for d in devices if d["uuid"].startswith(entry)]
        return _units(gpus[0]) if len(gpus) == 1 else None
    return None


def visible_gpus(
    devices: Sequence[Mapping[str, Any]] | None = None,
    env: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The GPUs (or MIG instances) a process with environment ``env`` may use.

    ``devices`` defaults to :func:`nvml_devices` and ``env`` to ``os.environ``. Each
    entry: ``index`` (NVML, PCI order), ``uuid`` (``GPU-...`` or ``MIG-...``: what a
    worker is pinned by), ``name``, ``memory_total``, ``memory_free``, ``pci_bus_id``
    and ``mig`` (None, or the parent GPU's UUID with the instance ids).
    """
    devices = nvml_devices() if devices is None else list(devices)
    env = os.environ if env is None else env
    entries = parse_visible_devices(env.get("CUDA_VISIBLE_DEVICES"))
    if entries is None:
        return [u for d in devices for u in _units(d)]
    order = env.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
    if (
        order != "PCI_BUS_ID"
        and any(e.isdigit() for e in entries)
        and len({d["name"] for d in devices}) > 1
    ):
        log.warning(
            "CUDA_VISIBLE_DEVICES=%s uses indices on a machine with different GPU models "
            "and CUDA_DEVICE_ORDER=%s: CUDA numbers them fastest first, NVML (and "
            "blockbuster) in PCI bus order; set CUDA_DEVICE_ORDER=PCI_BUS_ID or use GPU UUIDs",
            env.get("CUDA_VISIBLE_DEVICES"),
            order,
        )
    out: list[dict[str, Any]] = []
    for e in entries:
        hit = _resolve(e, devices)
        if hit is None:  # CUDA ignores this entry and every one after it
            log.warning(
                "CUDA_VISIBLE_DEVICES entry %r names no GPU here; it and the entries after "
                "it are ignored, as CUDA does",
                e,
            )
            break
        out.extend(u for u in hit if u["uuid"] not in {o["uuid"] for o in out})
    return out


def gpu_layout(
    gpus: Sequence[Mapping[str, Any]],
    *,
    cpus: int,
    memory_bytes: int,
    workers_per_gpu: int = 1,
    cpu_workers: int | None = None,
    gpu_memory_share: float = 0.5,
) -> list[dict[str, Any]]:
    """The workers of a local GPU cluster: one entry per worker process.

    - per GPU (or MIG instance), ``workers_per_gpu`` single-threaded workers with
      ``CUDA_VISIBLE_DEVICES=<uuid>``, ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` and the Dask
      resource ``GPU=1``; each is given two cores where the machine has four per GPU
      worker (one for the Dask thread and the GPU's batch, one for its read-ahead and
      write-behind threads and Cellpose's CPU steps), else one;
    - CPU workers (no ``GPU`` resource) on the cores left (``cpu_workers`` overrides);
    - memory: 90 % of ``memory_bytes``; the GPU workers share ``gpu_memory_share`` of it
      (all of it when there are no CPU workers), split per GPU worker: host memory per
      GPU, not per core; the CPU workers split the rest.

    Returns dicts with ``name``, ``kind`` ("gpu" / "cpu"), ``nthreads``,
    ``memory_limit``, ``resources``, ``env`` (and ``gpu``: the GPU's entry).
    """
    if not gpus:
        raise ValueError("gpu_layout needs at least one GPU")
    if workers_per_gpu < 1:
        raise ValueError(f"workers_per_gpu={workers_per_gpu!r} must be >= 1")
    n_gw = len(gpus) * workers_per_gpu
    cores_per_gw = 2 if cpus >= 4 * n_gw else 1
    n_cw = max(0, cpus - cores_per_gw * n_gw) if cpu_workers is None else int(cpu_workers)
    total = int(memory_bytes * 0.9)
    share = gpu_memory_share if n_cw else 1.0
    gpu_mem = max(int(total * share / n_gw), 512 << 20)
    cpu_mem = max(int(total * (1 - share) / n_cw), 256 << 20) if n_cw else 0
    workers: list[dict[str, Any]] = []
    for g in gpus:
        for k in range(workers_per_gpu):
            suffix = f"-{k}" if workers_per_gpu > 1 else ""
            tag = g["index"] if not g.get("mig") else f"{g['index']}-{g['uuid'][-8:]}"
            workers.append(
                {
                    "name": f"gpu-{tag}{suffix}",
                    "kind": "gpu",
                    "nthreads": 1,
                    "memory_limit": gpu_mem,
                    "resources": {GPU_RESOURCE: 1},
                    "env": {
                        "CUDA_VISIBLE_DEVICES": g["uuid"],
                        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                        "OMP_NUM_THREADS": str(cores_per_gw),
                    },
                    "gpu": dict(g),
                }
            )
    for k in range(n_cw):
        workers.append(
            {
                "name": f"cpu-{k}",
                "kind": "cpu",
                "nthreads": 1,
                "memory_limit": cpu_mem,
                "resources": {},
                "env": {"CUDA_VISIBLE_DEVICES": ""},  # CPU work never holds a CUDA context
            }
        )
    return workers


def worker_gpus() -> dict[str, Any]:
    """In a worker (``client.run(worker_gpus)``): the GPUs this process may use, read
    in the worker's own environment, with their free memory now.

    ``known`` is False when nobody can tell: nvidia-ml-py is missing there and the
    NVIDIA driver's ``/proc`` entries exist. ``CUDA_VISIBLE_DEVICES`` set but empty, or
    no NVIDIA driver at all (Linux), means no GPU for certain. Loads no model and
    creates no CUDA context.
    """
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    base = {"pid": os.getpid(), "CUDA_VISIBLE_DEVICES": cvd}
    if cvd is not None and not cvd.strip():
        return {**base, "known": True, "gpus": [], "how": "CUDA_VISIBLE_DEVICES is empty"}
    try:
        import pynvml  # noqa: F401
    except ImportError:
        proc = "/proc/driver/nvidia/gpus"
        if os.name == "posix" and os.path.isdir("/proc") and not os.path.isdir(proc):
            return {**base, "known": True, "gpus": [], "how": "no NVIDIA driver"}
        return {**base, "known": False, "gpus": [], "how": "nvidia-ml-py is not installed"}
    return {**base, "known": True, "gpus": visible_gpus(nvml_devices()), "how": "NVML"}


def gpu_worker_memory(
    client=None, allocation: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """Memory one GPU worker has for a tile: free GPU memory (``vram_bytes``) and host
    memory (``host_bytes``), with where they come from (``source``).

    With a client whose cluster has GPU workers, both are measured on those workers:
    the least free memory of a worker's GPU (split between the workers sharing that
    GPU), and the least Dask memory limit. Without a client, for the cluster
    :func:`make_local_cluster` would start here: this machine's GPUs and the memory
    :func:`gpu_layout` gives a GPU worker of ``allocation`` (:func:`allocation`'s
    ``cpus`` and ``memory_bytes``). None when there is no GPU worker, or no GPU.
    """
    if client is not None:
        gws = gpu_workers(client)
        if not gws:
            return None
        probes = client.run(worker_gpus, workers=list(gws))
        per_gpu: dict[str, int] = {}
        for p in probes.values():
            for g in p["gpus"][:1]:
                per_gpu[g["uuid"]] = per_gpu.get(g["uuid"], 0) + 1
        frees = [
            p["gpus"][0]["memory_free"] // per_gpu[p["gpus"][0]["uuid"]]
            for p in probes.values()
            if p["gpus"]
        ]
        limits = [int(w["memory_limit"]) for w in gws.values() if w.get("memory_limit")]
        return {
            "vram_bytes": min(frees) if frees else None,
            "host_bytes": min(limits) if limits else None,
            "source": f"measured on the cluster's {len(gws)} GPU worker(s)",
        }
    gpus = visible_gpus()
    if not gpus:
        return None
    if allocation is None:
        raise ValueError("gpu_worker_memory without a client needs the allocation")
    layout = gpu_layout(gpus, cpus=allocation["cpus"], memory_bytes=allocation["memory_bytes"])
    return {
        "vram_bytes": min(int(g["memory_free"]) for g in gpus),
        "host_bytes": min(w["memory_limit"] for w in layout if w["kind"] == "gpu"),
        "source": f"this machine's {len(gpus)} GPU(s) (NVML) and the GPU workers' memory "
        "make_local_cluster(use_gpu=True) gives",
    }


def declares_gpu(fn: Any) -> bool:
    """Whether a tile function declares that it needs a GPU: a true ``uses_gpu``
    attribute (or property), as ``cellpose_fn(gpu=True)`` has.

    Any callable may declare it (``fn.uses_gpu = True``, or a class attribute):
    ``tile_process`` then runs it on GPU workers only.

    Examples
    --------
    >>> def seg(tile): ...
    >>> declares_gpu(seg)
    False
    >>> seg.uses_gpu = True
    >>> declares_gpu(seg)
    True
    """
    try:
        return bool(getattr(fn, "uses_gpu", False))
    except Exception:  # a property that fails: no declaration
        return False


def workers_info(client) -> dict[str, dict[str, Any]]:
    """Every worker's scheduler info (all of them: recent distributed lists 5 by default)."""
    import inspect

    try:
        every = "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):  # pragma: no cover
        every = False
    info = client.scheduler_info(n_workers=-1) if every else client.scheduler_info()
    return dict(info.get("workers", {}))


def gpu_workers(client) -> dict[str, dict[str, Any]]:
    """The workers of ``client``'s cluster that offer the Dask ``GPU`` resource."""
    info = workers_info(client)
    return {a: w for a, w in info.items() if (w.get("resources") or {}).get(GPU_RESOURCE)}


def check_gpu_client(client, what: str) -> bool:
    """Check that ``client``'s cluster can run GPU work (``what`` names who needs it).

    True when some workers offer the ``GPU`` resource (GPU work is routed to them).
    Raises :class:`~blockbuster.errors.NoGPUError` when the workers can tell that none
    of them has a GPU. Otherwise (GPUs without the resource, or nobody can tell) logs a
    warning and returns False: the work then runs on any worker.
    """
    from blockbuster.errors import NoGPUError

    if gpu_workers(client):
        return True
    probes = client.run(worker_gpus)
    if probes and all(p["known"] and not p["gpus"] for p in probes.values()):
        hows = sorted({p["how"] for p in probes.values()})
        raise NoGPUError(
            f"{what}, but the Dask cluster in use has no GPU worker: none of its "
            f"{len(probes)} workers offers the Dask resource 'GPU' or sees a GPU "
            f"({'; '.join(hows)}). Nothing was run or written. Connect to a cluster with "
            "GPU workers (started with --resources GPU=1, one per GPU), close this client "
            "so blockbuster starts a GPU cluster on this machine, or use a CPU function"
        )
    if any(p["gpus"] for p in probes.values()):
        log.warning(
            "%s; the cluster's workers see GPUs but none offers the Dask resource 'GPU', so "
            "GPU work is not routed: every thread of every worker may load a model on the "
            "same GPU. Start one worker per GPU with --resources GPU=1 (dask-cuda's "
            "dask-cuda-worker does) or use make_local_cluster(use_gpu=True)",
            what,
        )
    else:
        log.warning(
            "%s; cannot tell whether the cluster's workers have GPUs (%s) and none offers "
            "the Dask resource 'GPU': GPU work is not routed. Install nvidia-ml-py on the "
            "workers and start one worker per GPU with --resources GPU=1",
            what,
            "; ".join(sorted({p["how"] for p in probes.values()})) or "no answer",
        )
    return False

"""``tile_shape="auto"``: the largest chunk-aligned tile whose working set fits memory.

Working set of one tile, per voxel of the tile *with its halo*::

    input        itemsize * channels
    fn's work    itemsize * channels * memory_factor   (declared by the function)
    fn's output  8 bytes (int64 labels, the worst case)
    staged       4 bytes

The budget is a fraction (``safety``, default 0.5) of the memory of one worker (its Dask
``memory_limit``, or the allocation split by CPU: psutil, cgroup and SLURM limits), or
of the free memory of one GPU when the function runs on a GPU. Starting from the input's
chunk shape, the tile grows by whole chunks, always along the axis where it is smallest,
while the working set fits. A function declares ``memory_factor`` as an attribute;
the default for an unknown function is 4.

On GPUs (``gpu_bytes``: the free memory of one GPU worker's GPU, measured on the
workers, minus the fixed part of one model, ``gpu_model_bytes``) a second limit holds
at once: the tile's working set on the GPU, ``itemsize * channels * gpu_memory_factor``
per voxel with its halo, within ``gpu_safety`` (0.8: PyTorch's caching allocator
fragments) of it. The host limit is then the GPU worker's own memory limit (host memory
per GPU). The tile is the largest that fits both, and never more than ``max_voxels``
(64 Mi voxels for GPUs: past that a tile only adds latency and host memory, not GPU
occupancy). A function that works plane by plane (a true ``plane_by_plane`` attribute)
keeps one-plane tiles (z = 1) on a 3D image: growing z first would turn a stack of
planes into 3D work.

Examples
--------
>>> shape, why = auto_tile_shape((4096, 4096), (256, 256), itemsize=2,
...                              memory_bytes=512 * 2**20, memory_factor=4)
>>> shape                    # 4096 x 2048 x 22 bytes per voxel fits 256 MiB
(4096, 2048)
>>> why["budget_bytes"] == 256 * 2**20
True
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "auto_tile_shape",
    "DEFAULT_MEMORY_FACTOR",
    "DEFAULT_GPU_MEMORY_FACTOR",
    "DEFAULT_GPU_MODEL_BYTES",
    "GPU_MAX_TILE_VOXELS",
    "bytes_per_voxel",
]

DEFAULT_MEMORY_FACTOR = 4.0
#: GPU memory per voxel of a tile (with its halo), as a multiple of the input's bytes,
#: for a function that declares none (``gpu_memory_factor``).
DEFAULT_GPU_MEMORY_FACTOR = 20.0
#: GPU memory of one model, its CUDA context and one batch of network inputs, for a
#: function that declares none (``gpu_model_bytes``).
DEFAULT_GPU_MODEL_BYTES = 2 << 30
#: The most voxels a tile sized for a GPU may have (64 Mi).
GPU_MAX_TILE_VOXELS = 64 << 20


def bytes_per_voxel(itemsize: int, n_channels: int, memory_factor: float) -> float:
    return itemsize * n_channels * (1.0 + memory_factor) + 8 + 4


def auto_tile_shape(
    shape: tuple[int, ...],
    chunks: tuple[int, ...] | None,
    *,
    itemsize: int,
    memory_bytes: int,
    n_channels: int = 1,
    overlap: tuple[int, ...] = (),
    memory_factor: float = DEFAULT_MEMORY_FACTOR,
    safety: float = 0.5,
    where: str = "worker memory",
    gpu_bytes: int | None = None,
    gpu_memory_factor: float = DEFAULT_GPU_MEMORY_FACTOR,
    gpu_safety: float = 0.8,
    gpu_where: str = "GPU memory",
    max_voxels: int | None = None,
    plane_by_plane: bool = False,
) -> tuple[tuple[int, ...], dict[str, Any]]:
    """Choose a tile shape (spatial) and return it with the reasoning (for the log).

    Examples
    --------
    A plane-by-plane function on a GPU with 16 GiB free for tiles, on a 3D stack: one
    plane per tile, as large as the GPU allows.

    >>> t, why = auto_tile_shape((64, 16384, 16384), (1, 1024, 1024), itemsize=2,
    ...     memory_bytes=64 << 30, memory_factor=35, gpu_bytes=16 << 30,
    ...     gpu_memory_factor=20, max_voxels=64 << 20, plane_by_plane=True)
    >>> t, why["limited_by"]
    ((1, 8192, 8192), 'max_voxels')
    """
    nd = len(shape)
    overlap = tuple(overlap) or (0,) * nd
    if chunks is None or any(c <= 0 for c in chunks):
        chunks = tuple(min(s, 64) for s in shape)
    chunks = tuple(min(int(c), int(s)) for c, s in zip(chunks, shape))
    planes = plane_by_plane and nd == 3
    if planes:  # one plane per tile; an int overlap adds no z halo to it
        chunks = (1,) + chunks[1:]
        overlap = (0,) + tuple(overlap[1:])
    bpv = bytes_per_voxel(itemsize, n_channels, memory_factor)
    budget = int(memory_bytes * safety)
    gpu_bpv = itemsize * n_channels * gpu_memory_factor
    gpu_budget = int(gpu_bytes * gpu_safety) if gpu_bytes is not None else None

    def voxels(t: list[int] | tuple[int, ...]) -> int:
        return math.prod(min(ti + 2 * o, s) for ti, o, s in zip(t, overlap, shape))

    def cost(t: list[int] | tuple[int, ...]) -> float:
        return bpv * voxels(t)

    def why_not(t: list[int] | tuple[int, ...]) -> str | None:
        if cost(t) > budget:
            return where
        if gpu_budget is not None and gpu_bpv * voxels(t) > gpu_budget:
            return gpu_where
        if max_voxels is not None and math.prod(t) > max_voxels:
            return "max_voxels"
        return None

    tile = list(chunks)
    note = None
    limited_by = "image size"
    if why_not(tile) is not None:
        note = (
            "one storage chunk (plus halo) already exceeds the budget; using one chunk "
            "per tile anyway"
        )
    else:
        while True:
            grown = False
            # grow the axis with the smallest tile first (keeps tiles compact)
            for d in sorted(range(nd), key=lambda d: (tile[d], d)):
                if tile[d] >= shape[d] or (planes and d == 0):
                    continue
                cand = list(tile)
                cand[d] = min(shape[d], tile[d] * 2 if tile[d] * 2 <= shape[d] else shape[d])
                cand[d] = min(shape[d], math.ceil(cand[d] / chunks[d]) * chunks[d])
                reason = why_not(cand)
                if reason is None:
                    tile = cand
                    grown = True
                    break
                limited_by = reason
            if not grown:
                break
    why = {
        "tile_shape": tuple(tile),
        "chunks": tuple(chunks),
        "budget_bytes": budget,
        "memory_bytes": int(memory_bytes),
        "memory_source": where,
        "safety": safety,
        "bytes_per_voxel": bpv,
        "memory_factor": memory_factor,
        "working_set_bytes": int(cost(tile)),
        "limited_by": limited_by if note is None else why_not(tile),
    }
    if gpu_budget is not None and gpu_bytes is not None:
        why.update(
            gpu_bytes=int(gpu_bytes),
            gpu_budget_bytes=gpu_budget,
            gpu_memory_factor=gpu_memory_factor,
            gpu_working_set_bytes=int(gpu_bpv * voxels(tile)),
            gpu_memory_source=gpu_where,
        )
    if max_voxels is not None:
        why["max_voxels"] = int(max_voxels)
    if planes:
        why["plane_by_plane"] = True
    if note:
        why["note"] = note
    return tuple(tile), why

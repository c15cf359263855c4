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

__all__ = ["auto_tile_shape", "DEFAULT_MEMORY_FACTOR", "bytes_per_voxel"]

DEFAULT_MEMORY_FACTOR = 4.0


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
) -> tuple[tuple[int, ...], dict[str, Any]]:
    """Choose a tile shape (spatial) and return it with the reasoning (for the log)."""
    nd = len(shape)
    overlap = tuple(overlap) or (0,) * nd
    if chunks is None or any(c <= 0 for c in chunks):
        chunks = tuple(min(s, 64) for s in shape)
    chunks = tuple(min(int(c), int(s)) for c, s in zip(chunks, shape))
    bpv = bytes_per_voxel(itemsize, n_channels, memory_factor)
    budget = int(memory_bytes * safety)

    def cost(t: list[int]) -> float:
        return bpv * math.prod(min(ti + 2 * o, s) for ti, o, s in zip(t, overlap, shape))

    tile = list(chunks)
    note = None
    if cost(tile) > budget:
        note = (
            "one storage chunk (plus halo) already exceeds the budget; using one chunk "
            "per tile anyway"
        )
    else:
        while True:
            grown = False
            # grow the axis with the smallest tile first (keeps tiles compact)
            for d in sorted(range(nd), key=lambda d: (tile[d], d)):
                if tile[d] >= shape[d]:
                    continue
                cand = list(tile)
                cand[d] = min(shape[d], tile[d] * 2 if tile[d] * 2 <= shape[d] else shape[d])
                cand[d] = min(shape[d], math.ceil(cand[d] / chunks[d]) * chunks[d])
                if cost(cand) <= budget:
                    tile = cand
                    grown = True
                    break
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
    }
    if note:
        why["note"] = note
    return tuple(tile), why

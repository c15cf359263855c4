"""Checking per-tile label images and compacting their ids.

``fn`` may return any non-negative integer labels; staging stores them *compacted*:
the ids present in the tile core become 1..n in increasing order of the original id,
so that a tile's labels are addressed by ``offset + local id`` with no gaps.

Examples
--------
>>> import numpy as np
>>> lab = np.array([[0, 7, 7], [3, 0, 9]])
>>> compact, n = compact_labels(lab)
>>> compact.tolist(), n
([[0, 2, 2], [1, 0, 3]], 3)
>>> smallest_label_dtype(2**32 - 1), smallest_label_dtype(2**32)
(dtype('uint32'), dtype('uint64'))
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

from blockbuster.errors import LabelOverflowError, TileOutputError

__all__ = [
    "map_through",
    "check_tile_labels",
    "compact_labels",
    "compact_with_halo",
    "smallest_label_dtype",
    "present_ids",
]

_U32_MAX = np.iinfo(np.uint32).max
_I64_MAX = np.iinfo(np.int64).max


def smallest_label_dtype(max_label: int) -> np.dtype[Any]:
    """``uint32`` when ``max_label`` fits, else ``uint64``; beyond that an error."""
    if max_label <= _U32_MAX:
        return np.dtype(np.uint32)
    if max_label <= np.iinfo(np.uint64).max:
        return np.dtype(np.uint64)
    raise LabelOverflowError(f"{max_label} labels do not fit in uint64")


def check_tile_labels(
    labels: Any, expected_shape: tuple[int, ...], tile: int, origin: tuple[int, ...]
) -> NDArray[Any]:
    """Validate what ``fn`` returned for one tile; return it as a NumPy integer array.

    Raises
    ------
    TileOutputError
        Not an array, not integer, wrong shape, or negative labels. The message names
        the tile number, its origin and the fix.
    """
    where = f"tile {tile} (origin {tuple(origin)})"
    try:
        arr = np.asarray(labels)
    except Exception as exc:  # pragma: no cover - exotic array-likes
        raise TileOutputError(
            f"fn returned {type(labels).__name__} for {where}, which is not "
            "an array; return an integer label array",
            tile,
            origin,
        ) from exc
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TileOutputError(
            f"fn returned dtype {arr.dtype} for {where}; it must return integer labels "
            "(0 = background). For a mask, label it first, e.g. scipy.ndimage.label(mask)[0]; "
            "for a float image, threshold and label it.",
            tile,
            origin,
        )
    if arr.shape != tuple(expected_shape):
        raise TileOutputError(
            f"fn returned shape {arr.shape} for {where}; expected {tuple(expected_shape)}, the "
            "spatial shape of the tile it was given (halo included, channel axis removed)",
            tile,
            origin,
        )
    if arr.size and np.issubdtype(arr.dtype, np.signedinteger) and arr.min() < 0:
        raise _negative_labels(int(arr.min()), tile, origin)
    if arr.size and arr.dtype == np.uint64 and int(arr.max()) > _I64_MAX:
        raise LabelOverflowError(
            f"fn returned label {int(arr.max())} for {where}; ids must be below 2**63 "
            "(they are handled as int64): renumber the tile's labels, e.g. "
            "skimage.segmentation.relabel_sequential(labels)[0]"
        )
    return arr


def _negative_labels(low: int, tile: int, origin: tuple[int, ...]) -> TileOutputError:
    return TileOutputError(
        f"fn returned negative labels (min {low}) for tile {tile} (origin {tuple(origin)}); "
        "labels must be >= 0 with 0 as background",
        tile,
        origin,
    )


def present_ids(labels: NDArray[Any]) -> NDArray[Any]:
    """Sorted non-zero ids present in ``labels``.

    Label images are made of runs of equal values, and every id present starts a run
    (in C order), so only the first value of each run is looked at: one comparison
    pass over the voxels, then a presence table (small ids) or ``unique`` over the run
    starts. About 2x faster than a ``bincount`` of every voxel on a 1024² tile of
    nuclei (3 % of voxels start a run); images where most voxels start a run (noise)
    take the plain path.

    >>> present_ids(np.array([[0, 5, 5, 0], [2, 2, 0, 9]]))
    array([2, 5, 9])
    """
    if labels.size == 0:
        return np.zeros(0, dtype=np.int64)
    flat = labels.reshape(-1)
    vals = flat
    if flat.size > 64:
        starts = flat[1:] != flat[:-1]
        if np.count_nonzero(starts) < flat.size // 4:
            vals = np.concatenate([flat[:1], flat[1:][starts]])
    mx = int(vals.max())
    if mx <= 0:
        return np.zeros(0, dtype=np.int64)
    if mx <= 4 * vals.size + 65536 and not (vals.dtype.kind == "i" and vals.min() < 0):
        seen = np.zeros(mx + 1, dtype=bool)
        seen[vals] = True
        ids = np.flatnonzero(seen)
    else:
        ids = np.unique(vals)
    ids = ids[ids > 0]
    return ids.astype(np.int64, copy=False)


def _map_ids(
    labels: NDArray[Any], ids: NDArray[Any], new: NDArray[Any], dtype: DTypeLike
) -> NDArray[Any]:
    """Replace ``ids[k]`` by ``new[k]`` (everything else by 0)."""
    if ids.size == 0:
        return np.zeros(labels.shape, dtype=dtype)
    mx = int(ids[-1])
    if mx <= 4 * labels.size + 65536:
        table = np.zeros(mx + 1, dtype=dtype)
        table[ids] = new
        return table[labels.astype(np.intp, copy=False)]
    pos = np.searchsorted(ids, labels)
    pos = np.minimum(pos, ids.size - 1)
    hit = ids[pos] == labels
    return np.where(hit, new.astype(dtype)[pos], 0).astype(dtype, copy=False)


def _small_uint(n: int) -> np.dtype[Any]:
    """The smallest unsigned dtype holding 0..n (staged tiles use it: fewer bytes to move)."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if n <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


def compact_labels(
    labels: NDArray[Any], dtype: DTypeLike | None = None, small: bool = False
) -> tuple[NDArray[Any], int]:
    """Renumber the non-zero ids of ``labels`` to 1..n, keeping their order.

    The result has ``dtype`` when given, else the smallest unsigned dtype holding n
    (``small=True``) or ``smallest_label_dtype(n)`` (uint32 or uint64).
    """
    ids = present_ids(labels)
    n = int(ids.size)
    if dtype is not None:
        dtype = np.dtype(dtype)
    else:
        dtype = _small_uint(n) if small else smallest_label_dtype(n)
    if n == 0 or int(ids[-1]) == n:
        # the ids are exactly 1..n already (what most labelling functions return): a
        # cast, not a lookup (~6x cheaper on a 1024² tile)
        return labels.astype(dtype, copy=False), n
    return _map_ids(labels, ids, np.arange(1, n + 1), dtype), n


def compact_with_halo(
    labels: NDArray[Any],
    core: tuple[slice, ...],
    dtype: DTypeLike | None = None,
    ids: NDArray[Any] | None = None,
) -> tuple[NDArray[Any], int]:
    """Compact labels of an extended tile so that core ids come first.

    Ids present in the core become 1..n (in order); ids present only in the halo get
    n+1..m. Returns the compacted *extended* array and n. ``ids``: the ids present in
    ``labels``, when the caller has them already.
    """
    core_ids = present_ids(labels[core])
    all_ids = present_ids(labels) if ids is None else ids
    halo_only = np.setdiff1d(all_ids, core_ids, assume_unique=True)
    n = int(core_ids.size)
    order = np.concatenate([core_ids, halo_only])
    new = np.arange(1, order.size + 1)
    srt = np.argsort(order, kind="stable")
    dtype = np.dtype(dtype) if dtype is not None else smallest_label_dtype(order.size)
    return _map_ids(labels, order[srt], new[srt], dtype), n


def map_through(
    table: NDArray[Any], labels: NDArray[Any], out: NDArray[Any], block: int = 1 << 16
) -> NDArray[Any]:
    """``out[...] = table[labels]``, block by block through a small index buffer.

    The same result as ``table[labels.astype(np.intp)]`` without the full-size index
    array (8 bytes per voxel), with each block's passes in cache. An id outside
    ``table`` (negative included) raises ``IndexError``.

    >>> map_through(np.array([0, 10, 20]), np.array([[2, 0], [1, 1]]),
    ...             np.empty((2, 2), np.int64)).tolist()
    [[20, 0], [10, 10]]
    """
    src, dst = labels.reshape(-1), out.reshape(-1)
    idx = np.empty(min(block, src.size), np.intp)
    for i in range(0, src.size, block):
        j = min(i + block, src.size)
        k = idx[: j - i]
        np.copyto(k, src[i:j], casting="unsafe")
        lo, hi = int(k.min()), int(k.max())
        if lo < 0 or hi >= table.size:
            bad = hi if hi >= table.size else int(src[i:j].min())
            raise IndexError(f"label id {bad} is outside the table (0..{table.size - 1})")
        # 'clip' never buffers the output ('raise' copies it); the bounds are checked above
        np.take(table, k, out=dst[i:j], mode="clip")
    return out

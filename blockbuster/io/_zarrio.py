"""Reading and writing many zarr chunks at once.

Arrays on a local disk with a simple codec chain are read and written chunk by chunk
by :mod:`blockbuster.io` (no zarr-python round trip at all). For the
others, zarr-python's synchronous ``Array.__getitem__`` / ``__setitem__`` is a round trip to
zarr's event-loop thread per call (plus a thread-pool hop for the file), ~0.7-1.3 ms
per call for a 64-256 KiB chunk on the CI machine, whatever the bytes. A batch of tiles
gathers its chunk reads or writes into one round trip with ``asyncio.gather`` over
``Array.async_array``, so zarr overlaps them (its own concurrency limit applies).

Examples
--------
>>> import numpy as np, zarr
>>> z = zarr.create_array(store=zarr.storage.MemoryStore(), shape=(4, 4), chunks=(2, 2),
...                       dtype="u1")
>>> write_regions(z, [((slice(0, 2), slice(0, 2)), np.ones((2, 2), "u1")),
...                   ((slice(2, 4), slice(2, 4)), np.full((2, 2), 2, "u1"))])
>>> [r.sum() for r in read_regions(z, [(slice(0, 2), slice(0, 2)), (slice(2, 4),) * 2])]
[np.uint64(4), np.uint64(8)]
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from functools import lru_cache
from typing import Any, Literal, TypeVar

import numpy as np
import zarr

from ._chunkfiles import chunk_files

T = TypeVar("T")

__all__ = ["read_region", "read_regions", "write_regions", "open_zarr_array_cached"]


@lru_cache(maxsize=32)
def open_zarr_array_cached(
    path: str, token: str = "", mode: str = "r+", zarr_format: Literal[2, 3] | None = None
) -> zarr.Array:
    """Open a zarr array once per process (``token`` distinguishes array generations).
    ``zarr_format``, when the caller knows it: zarr then reads that format's metadata
    only (on an object store, one request instead of three)."""
    from ._places import local_store

    return zarr.open_array(
        store=local_store(path, read_only=mode == "r"), mode=mode, zarr_format=zarr_format
    )


def _sync(coro: Coroutine[Any, Any, T]) -> T:
    from zarr.core.sync import sync

    return sync(coro)


def read_region(arr: zarr.Array, sl: tuple, out: np.ndarray | None = None) -> np.ndarray:
    """``arr[sl]`` as a NumPy array, from the chunk files directly where possible.
    ``out``: a buffer to decode a region of exactly one chunk into (the result is
    ``out`` then; otherwise a new array)."""
    cf = chunk_files(arr)
    if cf is not None:
        if isinstance(sl, tuple) and len(sl) < len(cf.shape):
            sl = sl + (slice(None),) * (len(cf.shape) - len(sl))
        got = cf.read(sl, out)
        if got is not None:
            return got
    return np.asarray(arr[sl])


def write_regions(
    arr: zarr.Array, items: Sequence[tuple[tuple[slice, ...], np.ndarray]], check_fill: bool = True
) -> None:
    """``arr[sl] = data`` for every ``(sl, data)``: whole chunks on a local disk directly,
    the rest in one round trip to zarr's loop. ``check_fill=False``: the caller knows
    that no chunk is all fill value."""
    cf = chunk_files(arr)
    if cf is not None:
        items = [(sl, data) for sl, data in items if not cf.write(sl, data, check_fill)]
    if len(items) <= 1:
        for sl, data in items:
            arr[sl] = data
        return
    aarr = arr.async_array

    async def go() -> None:
        await asyncio.gather(*(aarr.setitem(sl, data) for sl, data in items))

    _sync(go())


def read_regions(arr: zarr.Array, slices: Sequence[tuple[slice, ...]]) -> list[np.ndarray]:
    """``[arr[sl] for sl in slices]``: from the chunk files directly where possible, the
    rest in one round trip to zarr's loop."""
    cf = chunk_files(arr)
    if cf is not None:
        got = [cf.read(sl) for sl in slices]
        rest = [sl for sl, g in zip(slices, got) if g is None]
        it = iter(_read_regions_zarr(arr, rest) if rest else ())
        return [next(it) if g is None else g for g in got]
    return _read_regions_zarr(arr, slices)


def _read_regions_zarr(arr: zarr.Array, slices: Sequence[tuple[slice, ...]]) -> list[np.ndarray]:
    """``[arr[sl] for sl in slices]`` through zarr-python, in one round trip to its loop."""
    if len(slices) <= 1:
        return [np.asarray(arr[sl]) for sl in slices]
    aarr = arr.async_array

    async def go() -> list[Any]:
        return await asyncio.gather(*(aarr.getitem(sl) for sl in slices))

    return [np.asarray(r) for r in _sync(go())]

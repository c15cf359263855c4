"""Reading a run's output back: whole chunks (or shards) in parallel, few tasks.

``tile_process`` and ``merge_tile_labels`` return the labels they wrote: a dask array
(or, with ``compute=True``, a NumPy array). Reading 1,024 chunks of 128² through
``da.from_zarr`` makes 1,024 dask tasks, each a zarr-python call of ~1 ms of its own
machinery: 2.2-2.5 s on a 2-core machine, slower than the run that wrote them. Here:

- the labels are read in **groups** of whole chunks (whole shards, for a sharded
  array), a few MiB to tens of MiB each, so the returned dask array has one task per
  group (at most dask's ``array.chunk-size``, and at least about four groups per CPU
  while the groups stay at least one chunk);
- each chunk is decoded by :class:`~blockbuster.io.ChunkFiles` (each shard by
  :class:`~blockbuster.io.ShardReader`) where the layout is one they read, else the
  group is read through zarr-python (object stores, other codecs);
- ``compute=True`` decodes the groups in a thread pool straight into one NumPy array
  (zstd, blosc and gzip decoding release the GIL), with no dask graph at all.

Examples
--------
>>> import tempfile, numpy as np, zarr
>>> path = tempfile.mkdtemp() + "/labels.zarr"
>>> z = zarr.create_array(store=path, shape=(100, 60), chunks=(16, 16), dtype="u4",
...                       fill_value=0)
>>> z[...] = np.arange(6000, dtype="u4").reshape(100, 60)
>>> bool((read_labels(path, compute=True) == z[...]).all())
True
>>> lazy = read_labels(path, compute=False)
>>> lazy.numblocks, bool((lazy.compute() == z[...]).all())
((1, 1), True)
"""

from __future__ import annotations

import itertools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ._chunkfiles import ChunkFiles
from ._shardfiles import ShardReader

__all__ = ["LabelReader", "read_labels", "group_shape"]

#: the smallest group worth a task of its own (bytes); below it one group holds more
MIN_GROUP_BYTES = 4 * 1024**2
#: groups per CPU aimed for, so a thread pool (or dask) keeps every core busy
GROUPS_PER_CPU = 4


def _cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS
        return max(1, os.cpu_count() or 1)


def group_shape(
    shape: tuple[int, ...],
    unit: tuple[int, ...],
    itemsize: int,
    cpus: int | None = None,
    max_bytes: int | None = None,
) -> tuple[int, ...]:
    """The shape of a group of whole ``unit`` blocks (chunks or shards) to read as one.

    Groups grow along the last axes first (whole rows of chunks are contiguous in a
    C-order result), to about ``total / (GROUPS_PER_CPU * cpus)`` bytes, at least
    :data:`MIN_GROUP_BYTES` and at most ``max_bytes`` (dask's ``array.chunk-size``),
    never less than one unit.

    Examples
    --------
    >>> group_shape((4096, 4096), (128, 128), 4, cpus=2)
    (512, 4096)
    >>> group_shape((4096, 4096), (1024, 1024), 4, cpus=2)
    (1024, 2048)
    >>> group_shape((100, 60), (16, 16), 4, cpus=2)
    (112, 64)
    """
    if max_bytes is None:
        import dask
        from dask.utils import parse_bytes

        max_bytes = int(parse_bytes(dask.config.get("array.chunk-size", "128MiB")))
    cpus = cpus or _cpus()
    total = itemsize * math.prod(shape)
    target = min(max(total // (GROUPS_PER_CPU * cpus), MIN_GROUP_BYTES), max_bytes)
    unit_bytes = itemsize * math.prod(unit)
    want = max(1, target // max(unit_bytes, 1))  # units per group
    counts = [-(-s // u) for s, u in zip(shape, unit)]
    mult = [1] * len(shape)
    for ax in reversed(range(len(shape))):
        m = max(1, min(counts[ax], want))
        mult[ax] = m
        want = max(1, want // m)
    return tuple(u * m for u, m in zip(unit, mult))


class LabelReader:
    """Whole-block reads of one stored array (picklable: it reopens the array by path
    in whatever process unpickles it). ``reader[region]`` reads any unit-step region;
    regions aligned to :attr:`unit` are read block by block without zarr-python."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        self._state: tuple[Any, ChunkFiles | None, ShardReader | None] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_state": None}

    def __dask_tokenize__(self) -> tuple[str, str, int | None]:
        try:
            st = os.stat(os.path.join(self.path, "zarr.json"))
        except OSError:
            st = None
        return ("LabelReader", self.path, None if st is None else st.st_mtime_ns)

    def _open(self) -> tuple[Any, ChunkFiles | None, ShardReader | None]:
        if self._state is None:
            import zarr

            arr = zarr.open_array(self.path, mode="r")
            cf = ChunkFiles.of(arr)
            sr = ShardReader.of(arr) if cf is None else None
            self._state = (arr, cf, sr)
        return self._state

    @property
    def array(self) -> Any:
        return self._open()[0]

    @property
    def fast(self) -> bool:
        """True when blocks are decoded directly (no zarr-python per block)."""
        _, cf, sr = self._open()
        return cf is not None or sr is not None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def unit(self) -> tuple[int, ...]:
        """The block one file holds: the shard shape when sharded, else the chunks."""
        arr, _, _ = self._open()
        shards = getattr(arr, "shards", None)
        return tuple(int(c) for c in (shards or arr.chunks))

    def _bounds(self, region: tuple[slice, ...]) -> list[tuple[int, int]]:
        if not isinstance(region, tuple):
            region = (region,)
        if any(r is Ellipsis for r in region):
            i = region.index(Ellipsis)
            region = region[:i] + (slice(None),) * (self.ndim - len(region) + 1) + region[i + 1 :]
        region = region + (slice(None),) * (self.ndim - len(region))
        out = []
        for s, n in zip(region, self.shape):
            if not isinstance(s, slice):
                raise TypeError(f"LabelReader takes slices, got {s!r}")
            start, stop, step = s.indices(n)
            if step != 1:
                raise TypeError("LabelReader takes unit-step slices")
            out.append((start, max(start, stop)))
        return out

    def __getitem__(self, region: tuple[slice, ...]) -> np.ndarray:
        b = self._bounds(region)
        out = np.empty(tuple(hi - lo for lo, hi in b), self.dtype)
        self.read_into(b, out)
        return out

    def read_into(self, bounds: list[tuple[int, int]], out: np.ndarray) -> None:
        """Fill ``out`` with the region ``bounds`` (``(lo, hi)`` per axis)."""
        arr, cf, sr = self._open()
        if cf is None and sr is None:
            out[...] = arr[tuple(slice(lo, hi) for lo, hi in bounds)]
            return
        unit = self.unit
        ranges = [range(lo // u, -(-hi // u)) for (lo, hi), u in zip(bounds, unit)]
        buf = None
        for cell in itertools.product(*ranges):
            blo = [k * u for k, u in zip(cell, unit)]
            bhi = [min((k + 1) * u, n) for k, u, n in zip(cell, unit, self.shape)]
            a = [max(lo, x) for (lo, _), x in zip(bounds, blo)]
            z = [min(hi, x) for (_, hi), x in zip(bounds, bhi)]
            dst = tuple(slice(x - lo, y - lo) for x, y, (lo, _) in zip(a, z, bounds))
            whole = all(x == p and y == q for x, y, p, q in zip(a, z, blo, bhi))
            if sr is not None:
                if whole:
                    sr.read_shard(cell, out[dst])
                else:
                    tmp = np.empty(tuple(q - p for p, q in zip(blo, bhi)), self.dtype)
                    sr.read_shard(cell, tmp)
                    out[dst] = tmp[tuple(slice(x - p, y - p) for x, y, p in zip(a, z, blo))]
            elif cf is not None:
                buf = cf.read_chunk(cell, buf)
                out[dst] = buf[tuple(slice(x - p, y - p) for x, y, p in zip(a, z, blo))]


def _regions(shape: tuple[int, ...], group: tuple[int, ...]) -> list[list[tuple[int, int]]]:
    axes = [[(lo, min(lo + g, n)) for lo in range(0, n, g)] for n, g in zip(shape, group)]
    return [list(r) for r in itertools.product(*axes)]


def read_labels(path: str, *, compute: bool, threads: int | None = None) -> Any:
    """The stored array at ``path``: a NumPy array (``compute=True``, read by a pool of
    ``threads`` threads, default one per CPU) or a dask array with one task per group of
    whole chunks (:func:`group_shape`)."""
    import dask.array as da

    reader = LabelReader(path)
    shape, dtype = reader.shape, reader.dtype
    if math.prod(shape) == 0:
        empty = np.zeros(shape, dtype)
        return empty if compute else da.from_array(empty)
    group = group_shape(shape, reader.unit, dtype.itemsize)
    if not compute:
        return da.from_array(
            reader,
            chunks=group,
            asarray=False,
            lock=False,
            meta=np.empty((0,) * len(shape), dtype),
            name=f"blockbuster-labels-{da.core.tokenize(reader, group)}",
        )
    if not reader.fast:
        return np.asarray(reader.array[...])
    out = np.empty(shape, dtype)
    regions = _regions(shape, group)
    if len(regions) == 1:
        reader.read_into(regions[0], out)
        return out

    def one(b: list[tuple[int, int]]) -> None:
        reader.read_into(b, out[tuple(slice(lo, hi) for lo, hi in b)])

    with ThreadPoolExecutor(max_workers=min(threads or _cpus(), len(regions))) as pool:
        for _ in pool.map(one, regions):
            pass
    return out

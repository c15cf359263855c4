"""ArraySource: one stored array (one pyramid level), read lazily and cheap to pickle.

Holds the per-process cache of opened zarr arrays and TIFF files (:func:`clear_cache`),
the low-level openers that reopen a store in each process, and :func:`describe`, the
one-line description of a source. Build sources with
:func:`~blockbuster.io.open_path`. Re-exported by :mod:`blockbuster.io`.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._chunkfiles import ChunkFiles, chunk_files
from ._metadata import _check_level, _join, _stamp
from ._zarrio import read_region, read_regions

__all__ = ["ArraySource", "describe", "clear_cache"]


# --------------------------------------------------------------------------------------
# per-process cache of opened arrays
# --------------------------------------------------------------------------------------
_CACHE: OrderedDict[tuple, Any] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 32


def _cached(key: tuple[Any, ...], opener: Callable[[], Any]) -> Any:
    """Return ``opener()`` cached under ``key`` for this process (LRU, thread-safe).

    The process id is part of the key: a forked child never reuses its parent's open
    file handles (a shared file offset would corrupt concurrent TIFF reads).
    """
    key = (os.getpid(),) + key
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
    value = opener()  # opened outside the lock; a rare double open is harmless
    with _CACHE_LOCK:
        _CACHE[key] = value
        _CACHE.move_to_end(key)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return value


def clear_cache() -> None:
    """Forget every array opened by this process (they are reopened on the next read)."""
    with _CACHE_LOCK:
        _CACHE.clear()


# --------------------------------------------------------------------------------------
# ArraySource
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArraySource:
    """One stored array (one pyramid level), read lazily; cheap to pickle.

    Build it with :func:`open_path`.  Pickling carries only the fields below (a few
    hundred bytes); the opened zarr array or TIFF file lives in a per-process cache and is
    reopened on first use in each process.  It also works as a dask "array-like"
    (``shape``, ``dtype``, ``ndim``, ``__getitem__`` and a deterministic
    ``__dask_tokenize__``), so ``dask.array.from_array(src, chunks=src.chunks)`` builds a
    dask array whose graph holds only this small object.

    Attributes
    ----------
    path : str
        Resolved absolute path of the store root (zarr / OME-Zarr) or of the TIFF file.
    kind : str
        ``"zarr"``, ``"ome-zarr"`` or ``"tiff"``.
    shape, dtype, chunks
        Shape, dtype and storage chunk shape of the chosen level (inner chunks when the
        zarr v3 array is sharded: see ``shards``).
    channel_axis : int or None
        Axis of type ``"channel"`` in the NGFF metadata, the ``C`` (else ``S``) axis of a
        TIFF series, or a dimension named ``c``/``channel`` of a plain zarr array.
    axes : list of dict or None
        NGFF axes of the image (OME-Zarr only).
    scale : list of float or None
        Physical size of a voxel of the chosen level along each axis (NGFF ``scale``
        transforms, dataset and multiscale ones multiplied; OME-TIFF ``PhysicalSize*``).
    levels : list of tuple of int
        Shapes of all pyramid levels of the image (``[shape]`` when there is no pyramid).
    level : int
        Index of the chosen level in ``levels``.
    component : str or None
        Path inside the store of the image group or array (zarr), or the TIFF series index.
    ngff_version : str or None
        ``"0.4"``, ``"0.5"``, ... for OME-Zarr.
    zarr_format : int or None
        2 or 3 for zarr kinds.
    axis_names : tuple of str or None
        Lower-case axis names (NGFF names, TIFF series axes, zarr dimension names).
    shards : tuple of int or None
        Shard shape of a sharded zarr v3 array.
    level_paths : tuple of str
        Per level, the array's path inside ``path`` (zarr kinds); ``()`` for TIFF.
    ome_tiff : bool
        The TIFF carries OME-XML metadata.
    """

    path: str
    kind: str
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]
    channel_axis: int | None = None
    axes: list[dict] | None = None
    scale: list[float] | None = None
    levels: list[tuple[int, ...]] = field(default_factory=list)
    level: int = 0
    component: str | None = None
    ngff_version: str | None = None
    zarr_format: int | None = None
    axis_names: tuple[str, ...] | None = None
    shards: tuple[int, ...] | None = None
    level_paths: tuple[str, ...] = ()
    ome_tiff: bool = False
    _stamp: Any = field(default=None, repr=False, compare=False)

    # -- array-like protocol -----------------------------------------------------------
    @property
    def ndim(self) -> int:
        """Number of axes."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of elements of the chosen level."""
        return int(np.prod(self.shape, dtype=np.int64))

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        return self.read(key)

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return (
            "blockbuster.ArraySource",
            self.kind,
            self.path,
            self.component,
            self.level,
            self.shape,
            str(self.dtype),
            self._stamp,
        )

    # -- reading -----------------------------------------------------------------------
    def _array(self, level: int) -> Any:
        """The opened zarr array of ``level`` in this process (cached)."""
        if self.kind == "tiff":
            series = int(self.component or 0)
            return _cached(
                ("tiff", self.path, series, level, self._stamp),
                lambda: _open_tiff_level(self.path, series, level),
            )[0]
        sub = self.level_paths[level] if self.level_paths else ""
        return _cached(
            ("zarr", self.path, sub, self._stamp), lambda: _open_zarr_array(_join(self.path, sub))
        )

    def chunk_files(self) -> ChunkFiles | None:
        """The chosen level's :class:`~blockbuster.io.ChunkFiles` (whole
        chunks read directly from a local disk), or None (TIFF, or a layout zarr must
        decode)."""
        if self.kind == "tiff":
            return None
        return chunk_files(self._array(self.level))

    def read(self, slices: tuple[slice | int, ...], out: np.ndarray | None = None) -> np.ndarray:
        """Read a region of the chosen level into a NumPy array.

        Parameters
        ----------
        slices : tuple of slice or int
            One entry per leading axis (missing trailing axes are taken whole).
        out : numpy.ndarray, optional
            A work buffer the region may be decoded into (when it is exactly one chunk
            of a zarr array on a local disk); use the returned array, which is ``out``
            then, and a new array otherwise.

        Returns
        -------
        numpy.ndarray
            The region; only the chunks it overlaps are read.

        Examples
        --------
        >>> import tempfile, os, numpy as np, tifffile
        >>> from blockbuster.io import open_path
        >>> p = os.path.join(tempfile.mkdtemp(), "im.tif")
        >>> tifffile.imwrite(p, np.arange(64 * 64, dtype="u2").reshape(64, 64), tile=(16, 16))
        >>> open_path(p).read((slice(0, 2), slice(30, 33))).tolist()
        [[30, 31, 32], [94, 95, 96]]
        """
        arr = self._array(self.level)
        if self.kind == "tiff":
            return np.asarray(arr[tuple(slices)])
        return read_region(arr, tuple(slices), out)

    def read_many(
        self, slices_list: Iterable[tuple[slice, ...]], max_bytes: int = 64 << 20
    ) -> Iterator[np.ndarray]:
        """Yield ``self.read(s)`` for each ``s``: whole chunks on a local disk directly,
        else up to ``max_bytes`` of regions per round trip to zarr's event loop."""
        if self.kind == "tiff":
            yield from (self.read(s) for s in slices_list)
            return
        arr = self._array(self.level)
        group: list[tuple[slice, ...]] = []
        size = 0
        for sl in slices_list:
            nbytes = arr.dtype.itemsize * int(
                np.prod([len(range(*s.indices(d))) for s, d in zip(sl, arr.shape)])
            )
            if group and size + nbytes > max_bytes:
                yield from read_regions(arr, group)
                group, size = [], 0
            group.append(sl)
            size += nbytes
        if group:
            yield from read_regions(arr, group)

    def read_level(self, level: int, slices: tuple[slice | int, ...] | None = None) -> np.ndarray:
        """Read (a region of) another pyramid level, e.g. a coarse one for cheap sampling.

        Parameters
        ----------
        level : int
            Index into ``levels`` (negative counts from the coarsest).
        slices : tuple of slice or int, optional
            Region of that level; the whole level when omitted (pick a small level).

        Raises
        ------
        InvalidParameterError
            ``level`` does not exist.

        Examples
        --------
        >>> import tempfile, os, numpy as np, zarr
        >>> from blockbuster.io import open_path
        >>> p = os.path.join(tempfile.mkdtemp(), "a.zarr")
        >>> zarr.create_array(p, shape=(3, 3), dtype="u1")[...] = 7
        >>> int(open_path(p).read_level(-1).sum())
        63
        """
        level = _check_level(level, self.levels, self.path)
        arr = self._array(level)
        return np.asarray(arr[...] if slices is None else arr[tuple(slices)])

    # -- identity ----------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """What identifies this input for caching: location, level, layout and stamps.

        ``mtime_ns``/``size``: the newest modification time of the store's metadata files
        (``zarr.json``/``.zarray``/``.zattrs``/``.zgroup`` of the image group and of the
        level array) and of the level array's directory, or the TIFF file's mtime and
        size. ``pixels``: a stamp of every file of the level array (path, size, mtime,
        ctime; :func:`~blockbuster.io.tree_stamp`), or of the TIFF file (size, mtime,
        ctime, inode), so that chunks rewritten in place change it; with
        ``BLOCKBUSTER_INPUT_STAMP=metadata`` (opt-in, see :mod:`blockbuster.io`) it is
        left out.  Pixels are never read or hashed.  The image group's own directory and
        its ``labels/`` are left out on purpose: writing labels into ``<image>/labels``
        must not change the identity of the image.  It is recomputed at each call.

        Returns
        -------
        dict
            JSON-able: ``kind``, ``path``, ``component``, ``level``, ``shape``, ``dtype``,
            ``chunks``, ``mtime_ns``, ``size``, ``pixels``.
        """
        from ._stamp import file_stamp, stamp_mode, tree_stamp
        from ._stores import is_url

        stamp = _stamp(self.kind, self.path, self.component, self.level_paths, self.level)
        if stamp_mode() == "metadata":
            pixels: dict[str, Any] | None = None
        elif self.kind == "tiff":
            pixels = file_stamp(self.path)
        elif is_url(self.path):  # objects' keys, sizes and ETags
            from ._stores import tree_stamp_url

            sub = self.level_paths[self.level] if self.level_paths else ""
            pixels = tree_stamp_url(_join(self.path, sub) if sub else self.path)
        else:
            sub = self.level_paths[self.level] if self.level_paths else ""
            pixels = tree_stamp(_join(self.path, sub) if sub else self.path)
        return {
            "kind": self.kind,
            "path": self.path,
            "component": self.component,
            "level": self.level,
            "shape": list(self.shape),
            "dtype": str(self.dtype),
            "chunks": list(self.chunks),
            "mtime_ns": stamp[0],
            "size": stamp[1],
            "pixels": pixels,
        }

    def __repr__(self) -> str:
        return f"ArraySource({describe(self)})"


# --------------------------------------------------------------------------------------
# low-level openers (one per process, through the cache)
# --------------------------------------------------------------------------------------
def _open_zarr_array(p: str) -> Any:
    import zarr

    from ._places import local_store

    return zarr.open_array(store=local_store(p, read_only=True), mode="r")


def _open_tiff_level(path: str, series: int, level: int) -> tuple[Any, Any, Any]:
    import tifffile
    import zarr

    tf = tifffile.TiffFile(path)
    store = tf.series[series].aszarr(level=level)
    return zarr.open(store, mode="r"), tf, store  # keep the file and store alive


# --------------------------------------------------------------------------------------
# describe
# --------------------------------------------------------------------------------------
def describe(src: ArraySource) -> str:
    """A one-line human description of an :class:`ArraySource`.

    Examples
    --------
    >>> import tempfile, os, zarr
    >>> from blockbuster.io import open_path
    >>> p = os.path.join(tempfile.mkdtemp(), "a.zarr")
    >>> _ = zarr.create_array(p, shape=(64, 64), chunks=(32, 32), dtype="u2")
    >>> describe(open_path(p))  # doctest: +ELLIPSIS
    'zarr v3 array .../a.zarr, shape (64, 64) uint16, chunks (32, 32)'
    """
    if src.kind == "ome-zarr":
        what = f"OME-Zarr {src.ngff_version or '?'} image"
    elif src.kind == "tiff":
        what = "OME-TIFF" if src.ome_tiff else "TIFF"
    else:
        what = f"zarr v{src.zarr_format} array"
    where = src.path + (f" component {src.component!r}" if src.component else "")
    parts = [f"{what} {where}"]
    if len(src.levels) > 1 or src.kind == "ome-zarr":
        parts[0] += f" level {src.level} of {len(src.levels)}"
    names = ""
    if src.axis_names:
        names = (
            "".join(src.axis_names)
            if all(len(n) == 1 for n in src.axis_names)
            else ",".join(src.axis_names)
        ) + " "
    desc = f"{parts[0]}, shape {tuple(src.shape)} {names}{src.dtype}, chunks {tuple(src.chunks)}"
    if src.shards:
        desc += f", shards {tuple(src.shards)}"
    if src.channel_axis is not None:
        desc += f", channel axis {src.channel_axis}"
    if src.scale is not None:
        desc += f", scale {tuple(round(s, 6) for s in src.scale)}"
    return desc

"""Whole zarr chunks on a local disk, read and written without zarr-python's pipeline.

zarr-python spends ~1 ms per chunk call on its own machinery (an event-loop round
trip, a thread-pool hop per file, per-chunk specs and buffers) whatever the chunk's
size: 20x the cost of reading and decoding a 64 KiB chunk directly, 2x for a 4 MiB one
(docs/benchmarks.md, section 7). Tiles are chunks, so blockbuster reads and writes whole
chunks itself when an array's layout is one it can encode exactly as zarr does:

- a :class:`zarr.storage.LocalStore` (a directory on disk), a regular chunk grid;
- zarr v3: the ``bytes`` codec (little-endian) then at most one of ``zstd``, ``blosc``,
  ``gzip``; no sharding, no transpose, no checksum codec;
- zarr v2: C order, no filters, any numcodecs compressor (or none);
- a numeric or boolean dtype, a fill value.

Anything else returns ``None`` from :meth:`ChunkFiles.of` and the caller uses zarr.
Chunk keys come from the array's own metadata (``encode_chunk_key``), compression from
numcodecs (the library zarr itself uses), so the files are exactly what zarr reads and
writes: a chunk equal to the fill value everywhere is not stored (zarr's default
``write_empty_chunks=False``), and a file is written to a temporary name and renamed,
as zarr's ``LocalStore`` does.

Examples
--------
>>> import tempfile, numpy as np, zarr
>>> z = zarr.create_array(store=tempfile.mkdtemp(), shape=(5, 6), chunks=(2, 3),
...                       dtype="u2", fill_value=0)
>>> cf = ChunkFiles.of(z)
>>> cf.write((slice(0, 2), slice(3, 6)), np.full((2, 3), 7, "u2"))
True
>>> int(z[:].sum())                    # zarr reads what was written
42
>>> cf.read((slice(1, 5), slice(2, 4))).tolist()
[[0, 7], [0, 0], [0, 0], [0, 0]]
>>> cf.write((slice(1, 3), slice(0, 3)), np.ones((2, 3), "u2"))   # not whole chunks
False
"""

from __future__ import annotations

import itertools
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from blockbuster.errors import InputError

from ._zstd import Zstd, faster

__all__ = ["ChunkFiles", "chunk_files"]

# temporary file names: unique per process (pid and a random tag, for hosts sharing a
# filesystem) and per write (a counter; next() on it is atomic under the GIL)
_TMP: dict[str, Any] = {"pid": None, "tag": "", "count": itertools.count()}


def _tmp_suffix() -> str:
    if _TMP["pid"] != os.getpid():
        _TMP.update(pid=os.getpid(), tag=f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
    return f".{_TMP['tag']}-{next(_TMP['count'])}.partial"


def write_file(path: str, payload: Any) -> None:
    """Write ``payload`` to ``path`` atomically (a temporary name, then a rename), as
    zarr's ``LocalStore`` does; the directory is created when missing."""
    tmp = path + _tmp_suffix()
    try:
        f = open(tmp, "wb")
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        f = open(tmp, "wb")
    try:
        with f:
            f.write(payload)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_file(path: str) -> bytes:
    """The bytes of the file ``path`` (``FileNotFoundError`` when it is missing).

    ``os.open``/``os.read`` rather than ``open()``: no buffered file object per chunk
    (5 vs 9 µs per 1 KiB chunk file here, twice per tile in a merge)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        size = os.fstat(fd).st_size
        data = os.read(fd, size)
        if len(data) < size:  # a short read (or a file still growing): read to the end
            data = _to_end(fd, data)
        return data
    finally:
        os.close(fd)


def _to_end(fd: int, data: bytes) -> bytes:
    """``data`` (read from ``fd`` so far) and the rest of the file."""
    parts = [data]
    while chunk := os.read(fd, 1 << 20):
        parts.append(chunk)
    return b"".join(parts)


def undecodable(
    path: str, codec: Any, error: BaseException, inner: tuple[int, ...] | None = None
) -> InputError:
    """The error for a chunk file (or a shard's ``inner`` chunk) its codec cannot
    decode."""
    what = (
        f"chunk file {path!r}" if inner is None else f"shard file {path!r} (inner chunk {inner})"
    )
    return InputError(
        f"{what} could not be decoded with {codec!r} ({error}): the file is damaged or "
        "was not written for this array; write that chunk again (or the array)"
    )


def _v3_codec(codecs: Sequence[Any], dtype: np.dtype) -> tuple[np.dtype, Any] | None:
    """``(stored dtype, numcodecs codec or None)`` for a v3 codec chain, or ``None``."""
    import numcodecs
    from zarr.codecs import BloscCodec, BytesCodec, GzipCodec, ZstdCodec

    if not codecs or type(codecs[0]) is not BytesCodec or len(codecs) > 2:
        return None
    endian = getattr(codecs[0].endian, "value", codecs[0].endian)
    if dtype.itemsize > 1 and endian != "little":
        return None
    stored = dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype
    if len(codecs) == 1:
        return stored, None
    c = codecs[1]
    if type(c) is ZstdCodec:  # numcodecs' Zstd, faster on small chunks (io/_zstd.py)
        return stored, Zstd(level=c.level, checksum=c.checksum)
    if type(c) is GzipCodec:
        return stored, numcodecs.GZip(level=c.level)
    if type(c) is BloscCodec and c.shuffle is not None and c.cname is not None:
        shuffle = {
            "noshuffle": numcodecs.Blosc.NOSHUFFLE,
            "shuffle": numcodecs.Blosc.SHUFFLE,
            "bitshuffle": numcodecs.Blosc.BITSHUFFLE,
        }[getattr(c.shuffle, "value", str(c.shuffle))]
        return stored, numcodecs.Blosc(
            cname=getattr(c.cname, "value", c.cname),
            clevel=c.clevel,
            shuffle=shuffle,
            blocksize=c.blocksize or 0,
        )
    return None


def direct_layout(arr: Any, any_store: bool = False) -> tuple[str, Any, np.dtype, bool] | None:
    """The one eligibility check of the direct chunk and shard path, shared by reads
    and writes: ``(directory, metadata, dtype, read_only)`` of a zarr array in a local
    directory with a regular chunk grid, no storage transformers, a numeric dtype and a
    fill value; ``None`` otherwise, or when ``BLOCKBUSTER_DIRECT_CHUNKS=false``
    (:mod:`blockbuster.config`). Which codecs qualify is each writer's own check.
    ``any_store``: an array in any other zarr store qualifies too, its ``directory``
    then ``""`` (whole shards written through the store: :class:`ShardWriter`)."""
    from zarr.core.chunk_grids import RegularChunkGrid
    from zarr.storage import LocalStore

    from blockbuster.config import runtime_settings

    sp = getattr(arr, "store_path", None)
    md = getattr(arr, "metadata", None)
    if sp is None or md is None:
        return None
    local = type(sp.store) is LocalStore
    if not local and not any_store:
        return None
    if not runtime_settings().direct_chunks:
        return None
    dtype = np.dtype(arr.dtype)
    if dtype.kind not in "biuf" or arr.fill_value is None:
        return None
    if md.zarr_format == 3 and (
        not isinstance(md.chunk_grid, RegularChunkGrid) or getattr(md, "storage_transformers", ())
    ):
        return None
    where = os.path.join(str(sp.store.root), sp.path) if local else ""
    return where, md, dtype, bool(sp.store.read_only)


class ChunkFiles:
    """The chunk files of one zarr array on a local disk (see the module docstring).

    Build with :meth:`of` (or the cached :func:`chunk_files`); it returns ``None`` for
    an array whose layout this class does not encode, and the caller falls back to zarr.
    """

    def __init__(
        self,
        directory: str,
        shape: tuple[int, ...],
        chunks: tuple[int, ...],
        dtype: np.dtype,
        stored: np.dtype,
        fill_value: Any,
        codec: Any,
        key_of: Callable[[tuple[int, ...]], str],
        write_empty: bool,
        writable: bool,
    ):
        self.directory = directory
        self.shape = shape
        self.chunks = chunks
        self.dtype = dtype
        self.stored = stored
        self.fill_value = fill_value
        self.codec = codec
        self.key_of = key_of
        self.write_empty = write_empty
        self.writable = writable
        self._fill_is_nan = bool(np.issubdtype(dtype, np.floating) and np.isnan(fill_value))

    @classmethod
    def of(cls, arr: Any) -> ChunkFiles | None:
        """The chunk files of ``arr`` (a ``zarr.Array``), or ``None`` if not eligible."""
        found = direct_layout(arr)
        if found is None:
            return None
        directory, md, dtype, read_only = found
        if md.zarr_format == 3:
            got = _v3_codec(md.codecs, dtype)
            if got is None:
                return None
            stored, codec = got
        elif md.zarr_format == 2:
            if md.filters or md.order != "C":
                return None
            stored, codec = dtype, faster(md.compressor)
            if codec is not None and not (hasattr(codec, "encode") and hasattr(codec, "decode")):
                return None
        else:
            return None
        config = getattr(arr.async_array, "config", None)
        write_empty = bool(getattr(config, "write_empty_chunks", False))
        return cls(
            directory,
            tuple(int(s) for s in arr.shape),
            tuple(int(c) for c in arr.chunks),
            dtype,
            stored,
            np.asarray(arr.fill_value, dtype=dtype)[()],
            codec,
            md.encode_chunk_key,
            write_empty,
            not read_only,
        )

    # -- paths --------------------------------------------------------------------------
    def path(self, coords: tuple[int, ...]) -> str:
        """The file of chunk ``coords`` (it may not exist: then the chunk is fill)."""
        return os.path.join(self.directory, self.key_of(tuple(int(c) for c in coords)))

    def _bounds(self, region: tuple) -> list[tuple[int, int]] | None:
        if not isinstance(region, tuple) or len(region) != len(self.shape):
            return None
        out = []
        for s, n in zip(region, self.shape):
            if not isinstance(s, slice):
                return None
            start, stop, step = s.indices(n)
            if step != 1:
                return None
            out.append((start, max(start, stop)))
        return out

    # -- reading ------------------------------------------------------------------------
    def read_chunk(self, coords: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray:
        """Chunk ``coords`` as an array of the full chunk shape: a new one, or ``out``
        (C-contiguous, chunk shape, the array's dtype) filled in place."""
        if (
            out is None
            or out.shape != self.chunks
            or out.dtype != self.stored
            or self.stored != self.dtype
            or not out.flags.c_contiguous
        ):
            out = np.empty(self.chunks, self.stored)
        try:
            if self.codec is None:
                with open(self.path(coords), "rb") as f:
                    got = f.readinto(out.data.cast("B"))
                if got != out.nbytes:
                    raise ValueError(
                        f"chunk file {self.path(coords)!r} holds {got} "
                        f"bytes, expected {out.nbytes}"
                    )
            else:
                path = self.path(coords)
                blob = read_file(path)
                try:
                    self.codec.decode(blob, out=out)
                except Exception as e:
                    raise undecodable(path, self.codec, e) from e
        except FileNotFoundError:
            if out.dtype == self.dtype:
                out.fill(self.fill_value)
                return out
            out = np.full(self.chunks, self.fill_value, self.dtype)
        return out if out.dtype == self.dtype else out.astype(self.dtype)

    def read_chunks(self, cells: Sequence[tuple[int, ...]], out: np.ndarray) -> None:
        """Chunks ``cells`` decoded into ``out[i]`` (``out``: C-contiguous, shape
        ``(len(cells),) + chunks``, the array's dtype); a missing chunk reads as fill.

        The same as :meth:`read_chunk` per cell, in one loop: a merge unit reads 256
        chunk files of 128² at once, and the per-call checks, path joins and buffer
        views of :meth:`read_chunk` cost as much as the file read itself (36 -> 25 µs a
        64 KiB chunk, docs/benchmarks.md, section 2).
        """
        if (
            out.shape != (len(cells),) + self.chunks
            or out.dtype != self.dtype
            or not out.flags.c_contiguous
        ):
            raise ValueError(
                f"read_chunks needs a C-contiguous {self.dtype} array of shape "
                f"{(len(cells),) + self.chunks}, got {out.dtype} {out.shape}"
            )
        if self.stored != self.dtype or not isinstance(self.codec, Zstd) or not len(cells):
            for cell, slot in zip(cells, out):
                self.read_chunk(cell, out=slot)
            return
        flat = out.reshape(len(cells), -1).view(np.uint8)
        nbytes = flat.shape[1]
        cap = nbytes + (nbytes >> 7) + 1024  # above zstd's bound for one frame
        key_of, root = self.key_of, self.directory
        flags = os.O_RDONLY | getattr(os, "O_BINARY", 0)
        for cell, dst in zip(cells, flat):
            path = os.path.join(root, key_of(cell))
            try:
                fd = os.open(path, flags)
            except FileNotFoundError:
                dst.view(self.dtype).fill(self.fill_value)
                continue
            try:
                blob = os.read(fd, cap)
                if len(blob) == cap:  # more than one frame of this chunk: read to the end
                    blob = _to_end(fd, blob)
            finally:
                os.close(fd)
            try:
                self.codec.decode(blob, out=dst)
            except Exception as e:
                raise undecodable(path, self.codec, e) from e

    def read(self, region: tuple[slice, ...], out: np.ndarray | None = None) -> np.ndarray | None:
        """``arr[region]`` for unit-step slices (one per axis), or ``None`` otherwise.
        ``out``: a buffer a region of exactly one whole chunk is decoded into (else a
        new array is returned)."""
        b = self._bounds(region)
        if b is None:
            return None
        ranges = [range(lo // c, -(-hi // c)) for (lo, hi), c in zip(b, self.chunks)]
        cells = list(itertools.product(*ranges))
        if len(cells) == 1 and all(
            lo == k * c and hi - lo == c for (lo, hi), k, c in zip(b, cells[0], self.chunks)
        ):
            return self.read_chunk(cells[0], out)  # exactly one whole chunk
        out = np.empty(tuple(hi - lo for lo, hi in b), self.dtype)
        for cell in cells:
            dst, src = [], []
            for (lo, hi), k, c in zip(b, cell, self.chunks):
                a0, a1 = max(lo, k * c), min(hi, (k + 1) * c)
                dst.append(slice(a0 - lo, a1 - lo))
                src.append(slice(a0 - k * c, a1 - k * c))
            out[tuple(dst)] = self.read_chunk(cell)[tuple(src)]
        return out

    # -- writing ------------------------------------------------------------------------
    def write(self, region: tuple[slice, ...], data: np.ndarray, check_fill: bool = True) -> bool:
        """``arr[region] = data`` when ``region`` is whole chunks (clipped at the array's
        edge); returns ``False``, writing nothing, otherwise. ``check_fill=False``: the
        caller knows no chunk is all fill value (a pass over the data saved)."""
        b = self._bounds(region)
        if b is None or not self.writable:
            return False
        data = np.asarray(data)
        if data.shape != tuple(hi - lo for lo, hi in b):
            return False
        for (lo, hi), c, n in zip(b, self.chunks, self.shape):
            if lo % c or (hi % c and hi != n):
                return False
        ranges = [range(lo // c, -(-hi // c)) for (lo, hi), c in zip(b, self.chunks)]
        for cell in itertools.product(*ranges):
            sub = tuple(
                slice(k * c - lo, min((k + 1) * c, hi) - lo)
                for (lo, hi), k, c in zip(b, cell, self.chunks)
            )
            self.write_chunk(cell, data[sub], check_fill)
        return True

    def write_chunk(
        self, coords: tuple[int, ...], data: np.ndarray, check_fill: bool = True
    ) -> None:
        """Store chunk ``coords`` from ``data`` (the chunk's in-bounds part; the rest of
        an edge chunk is fill)."""
        data = np.asarray(data)
        if data.shape != self.chunks:
            full = np.full(self.chunks, self.fill_value, self.stored)
            full[tuple(slice(0, s) for s in data.shape)] = data
            data = full
        path = self.path(coords)
        if check_fill and not self.write_empty and self._is_fill(data):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return
        data = np.ascontiguousarray(data, dtype=self.stored)
        payload = data.data.cast("B") if self.codec is None else self.codec.encode(data)
        write_file(path, payload)

    def _is_fill(self, data: np.ndarray) -> bool:
        if self._fill_is_nan:
            return bool(np.isnan(data).all())
        return not bool((data != self.fill_value).any())


_CACHE: dict[int, tuple[Any, ChunkFiles | None]] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_MAX = 64


def chunk_files(arr: Any) -> ChunkFiles | None:
    """:meth:`ChunkFiles.of` ``arr``, cached per array object in this process.

    The cache holds the array itself, so an entry's ``id`` cannot be reused while it is
    cached.
    """
    key = id(arr)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0] is arr:
            return hit[1]
    cf = ChunkFiles.of(arr)
    with _CACHE_LOCK:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = (arr, cf)
    return cf

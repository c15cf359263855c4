"""Whole shards of a sharded zarr v3 array, written without zarr-python (read back from a
local disk).

A merge of small tiles in merge units (core/units.py) writes its output sharded: one
shard per unit, one inner chunk per tile. Creating a file costs more than writing a
small chunk's bytes on most filesystems (0.05-0.5 ms per new file on this project's
ext4, milliseconds on Lustre or GPFS), so 4,096 tiles of 128² make 16 files instead of
4,096. zarr-python writes a shard at 0.5-0.7 ms per inner chunk (measured, 256 inner
chunks of 128²); :class:`ShardWriter` encodes each inner chunk as it comes (~0.08 ms
with zstd) and writes the shard in one go.

The format is the ``sharding_indexed`` codec of the zarr v3 specification: the
encoded inner chunks one after another, and an index of ``(offset, nbytes)`` per inner
chunk (little-endian uint64, C order of the inner chunks in the shard; an absent chunk
is ``2**64 - 1`` twice), encoded with the index codecs (``bytes``, then optionally
``crc32c``: the index's CRC-32C as 4 little-endian bytes), at the end or the start of
the shard. Only what :func:`ShardWriter.of` recognises is written this way: a regular
grid, sharding as the only codec, inner codecs as in :mod:`blockbuster.io`. In a
:class:`zarr.storage.LocalStore` a shard is a file written atomically; in any other
store (an object store) it is one ``set`` of the whole shard through zarr's store,
where zarr-python's own write would first read the shard back (a GET per shard) and
encode it chunk by chunk. :class:`ShardReader` reads local files only.

Examples
--------
>>> import tempfile, numpy as np, zarr
>>> z = zarr.create_array(store=tempfile.mkdtemp(), shape=(6, 8), chunks=(2, 2),
...                       shards=(4, 4), dtype="u2", fill_value=0)
>>> w = ShardWriter.of(z)
>>> shard = w.shard((1, 0))              # rows 4..7 (the array ends at 6), columns 0..3
>>> shard.add(((4, 6), (2, 4)), np.full((2, 2), 7, "u2"))
>>> shard.close()
>>> z[4:6, 0:4].tolist()
[[0, 0, 7, 7], [0, 0, 7, 7]]
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._chunkfiles import _v3_codec, direct_layout, read_file, undecodable, write_file

__all__ = ["ShardReader", "ShardWriter"]

_ABSENT = np.uint64(2**64 - 1)


def _layout(arr: Any, writable: bool) -> dict[str, Any] | None:
    """The shard layout of ``arr`` as :class:`ShardWriter` / :class:`ShardReader`
    arguments, or ``None`` when it is not one this module handles (``writable``: the
    store must also accept writes; a writer takes an array in any zarr store, whose
    shards it puts through the store, a reader only one in a local directory)."""
    from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec

    found = direct_layout(arr, any_store=writable)
    if found is None:
        return None
    directory, md, dtype, read_only = found
    if md.zarr_format != 3 or (writable and read_only):
        return None
    codecs = md.codecs
    if len(codecs) != 1 or type(codecs[0]) is not ShardingCodec:
        return None
    sc = codecs[0]
    got = _v3_codec(sc.codecs, dtype)
    idx = tuple(sc.index_codecs)
    if (
        got is None
        or not idx
        or type(idx[0]) is not BytesCodec
        or getattr(idx[0].endian, "value", idx[0].endian) not in ("little", None)
        or not all(type(c) is Crc32cCodec for c in idx[1:])
        or len(idx) > 2
    ):
        return None
    location = getattr(sc.index_location, "value", sc.index_location)
    shard_shape = tuple(int(c) for c in md.chunk_grid.chunk_shape)
    chunk_shape = tuple(int(c) for c in sc.chunk_shape)
    if any(s % c for s, c in zip(shard_shape, chunk_shape)):  # pragma: no cover
        return None
    return {
        "directory": directory,
        "store_path": None if directory else arr.store_path,
        "shape": tuple(int(s) for s in arr.shape),
        "shard_shape": shard_shape,
        "chunk_shape": chunk_shape,
        "stored": got[0],
        "fill_value": np.asarray(arr.fill_value, dtype=dtype)[()],
        "codec": got[1],
        "key_of": md.encode_chunk_key,
        "crc": len(idx) == 2,
        "at_end": location == "end",
    }


class ShardWriter:
    """The shard files of one sharded zarr v3 array (see the module docstring); build
    with :meth:`of`, which returns ``None`` for a layout this class does not write."""

    def __init__(
        self,
        directory: str,
        shape: tuple[int, ...],
        shard_shape: tuple[int, ...],
        chunk_shape: tuple[int, ...],
        stored: np.dtype,
        fill_value: Any,
        codec: Any,
        key_of: Callable[[tuple[int, ...]], str],
        crc: bool,
        at_end: bool,
        store_path: Any = None,
    ):
        self.directory = directory
        self.store_path = store_path  # a zarr StorePath: shards are put through it
        self.shape = shape
        self.shard_shape = shard_shape
        self.chunk_shape = chunk_shape
        self.stored = stored
        self.fill_value = fill_value
        self.codec = codec
        self.key_of = key_of
        self.crc = crc
        self.at_end = at_end
        self.per_shard = tuple(s // c for s, c in zip(shard_shape, chunk_shape))

    @classmethod
    def of(cls, arr: Any) -> ShardWriter | None:
        """The shard writer of ``arr`` (a ``zarr.Array``), or ``None`` if not eligible."""
        kw = _layout(arr, writable=True)
        return None if kw is None else cls(**kw)

    def shard(self, coords: Sequence[int]) -> _Shard:
        """A shard to fill with :meth:`_Shard.add` and write with :meth:`_Shard.close`."""
        return _Shard(self, tuple(int(c) for c in coords))


class _Shard:
    """One shard being assembled: inner chunks are encoded as they are added."""

    def __init__(self, writer: ShardWriter, coords: tuple[int, ...]):
        self.w = writer
        self.coords = coords
        self.origin = tuple(c * s for c, s in zip(coords, writer.shard_shape))
        self.index = np.full(writer.per_shard + (2,), _ABSENT, dtype="<u8")
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, bounds: Sequence[tuple[int, int]], data: np.ndarray) -> None:
        """Inner chunk data for the region ``bounds`` (``(lo, hi)`` per axis): one whole
        inner chunk of this shard, clipped at the array's edge."""
        w = self.w
        inner = []
        for (lo, hi), o, c, n in zip(bounds, self.origin, w.chunk_shape, w.shape):
            k, r = divmod(lo - o, c)
            if r or k < 0 or (hi - lo != c and hi != n):
                raise ValueError(
                    f"region {tuple(bounds)} is not one inner chunk of shard {self.coords}"
                )
            inner.append(k)
        if any(k >= p for k, p in zip(inner, w.per_shard)):
            raise ValueError(f"region {tuple(bounds)} is outside shard {self.coords}")
        data = np.asarray(data)
        if data.shape != w.chunk_shape:
            full = np.full(w.chunk_shape, w.fill_value, w.stored)
            full[tuple(slice(0, s) for s in data.shape)] = data
            data = full
        data = np.ascontiguousarray(data, dtype=w.stored)
        payload = bytes(data.data.cast("B")) if w.codec is None else w.codec.encode(data)
        self.index[tuple(inner)] = (self.size, len(payload))
        self.parts.append(payload)
        self.size += len(payload)

    def close(self) -> None:
        """Write the shard (atomically: a temporary file, then a rename); nothing when no
        inner chunk was added."""
        if not self.parts:
            return
        w = self.w
        index = self.index
        n_index = index.nbytes + (4 if w.crc else 0)
        if not w.at_end:
            index = index.copy()
            present = index[..., 0] != _ABSENT
            index[present, 0] += np.uint64(n_index)
        raw = index.tobytes()
        if w.crc:
            import google_crc32c

            raw += struct.pack("<I", google_crc32c.value(raw))
        blob = b"".join([*self.parts, raw] if w.at_end else [raw, *self.parts])
        key = w.key_of(self.coords)
        if w.store_path is None:
            write_file(os.path.join(w.directory, key), blob)
            return
        # an object store: one PUT of the whole shard (zarr's sharding codec would GET
        # the shard first, as for any partial write, and encode chunk by chunk)
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        sync((w.store_path / key).set(default_buffer_prototype().buffer.from_bytes(blob)))


class ShardReader(ShardWriter):
    """The shard files of one sharded zarr v3 array read whole, without zarr-python:
    one file read per shard, its index parsed, each inner chunk decoded (the layout of
    :class:`ShardWriter`; the CRC-32C of the index, when there is one, is not checked).

    Examples
    --------
    >>> import tempfile, numpy as np, zarr
    >>> z = zarr.create_array(store=tempfile.mkdtemp(), shape=(6, 8), chunks=(2, 2),
    ...                       shards=(4, 4), dtype="u2", fill_value=0)
    >>> z[...] = np.arange(48, dtype="u2").reshape(6, 8)
    >>> r = ShardReader.of(zarr.open_array(z.store_path.store.root, mode="r"))
    >>> out = np.zeros((6, 8), "u2")
    >>> r.read_shard((1, 1), out[4:6, 4:8])
    >>> bool((out[4:6, 4:8] == z[4:6, 4:8]).all())
    True
    """

    @classmethod
    def of(cls, arr: Any) -> ShardReader | None:  # type: ignore[override]
        """The shard reader of ``arr`` (a ``zarr.Array``), or ``None`` if not eligible."""
        kw = _layout(arr, writable=False)
        return None if kw is None else cls(**kw)

    def read_shard(self, coords: Sequence[int], out: np.ndarray) -> None:
        """Decode shard ``coords`` into ``out``: the shard's region of the array
        (clipped at the array's edge); absent inner chunks become the fill value."""
        coords = tuple(int(c) for c in coords)
        try:
            path = os.path.join(self.directory, self.key_of(coords))
            blob = read_file(path)
        except FileNotFoundError:
            out[...] = self.fill_value
            return
        n_chunks = int(np.prod(self.per_shard))
        n_index = n_chunks * 16 + (4 if self.crc else 0)
        raw = blob[len(blob) - n_index :] if self.at_end else blob[:n_index]
        index = np.frombuffer(raw, dtype="<u8", count=n_chunks * 2).reshape(self.per_shard + (2,))
        origin = tuple(c * s for c, s in zip(coords, self.shard_shape))
        buf = np.empty(self.chunk_shape, self.stored)
        view = memoryview(blob)
        for inner in np.ndindex(*self.per_shard):
            lo = tuple(o + k * c for o, k, c in zip(origin, inner, self.chunk_shape))
            if any(a >= n for a, n in zip(lo, self.shape)):
                continue
            dst = tuple(
                slice(a - o, min(a + c, n) - o)
                for a, o, c, n in zip(lo, origin, self.chunk_shape, self.shape)
            )
            off, nbytes = index[inner]
            if off == _ABSENT:
                out[dst] = self.fill_value
                continue
            part = view[int(off) : int(off) + int(nbytes)]
            if self.codec is None:
                chunk = np.frombuffer(part, dtype=self.stored).reshape(self.chunk_shape)
            else:
                try:
                    self.codec.decode(part, out=buf)
                except Exception as e:
                    raise undecodable(path, self.codec, e, inner) from e
                chunk = buf
            out[dst] = chunk[tuple(slice(0, d.stop - d.start) for d in dst)]

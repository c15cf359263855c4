"""Zstandard for the direct chunk path: small chunks through contexts kept per thread.

numcodecs' ``Zstd`` (the codec zarr itself uses) creates a compression or decompression
context on every call. For a small chunk that setup is much of the work: a 128² int32
label chunk (64 KiB, ~1 KiB compressed) took 44 µs to encode and 29 µs to decode with
it, 30 µs and 17 µs through a ``zstandard`` context the thread keeps (measured on this
project's 2-core machine; docs/benchmarks.md, section 2). A merge of 16,384 such tiles
encodes each once and decodes each twice. From 1 MiB up the per-call setup no longer
counts and numcodecs was the faster encoder (labels: 444 vs 534 µs per MiB), so only
chunks up to :data:`SMALL` bytes go through ``zstandard``; larger ones keep numcodecs.

Both write standard zstd frames with the content size in the header (what zarr,
numcodecs and every other zstd reader expects), at the same level and with the same
checksum flag, so a chunk written by either is read by the other.

Examples
--------
>>> import numpy as np
>>> codec = Zstd(level=0)
>>> a = np.arange(1000, dtype="<i4")
>>> out = np.empty_like(a)
>>> _ = codec.decode(codec.encode(a), out=out)
>>> bool((out == a).all())
True
>>> import numcodecs                       # numcodecs reads what this wrote
>>> bool((np.frombuffer(numcodecs.Zstd().decode(codec.encode(a)), "<i4") == a).all())
True
"""

from __future__ import annotations

import threading
from typing import Any

import numcodecs
import numpy as np
import zstandard

__all__ = ["SMALL", "Zstd", "faster"]

#: chunks up to this many (decoded) bytes use a per-thread ``zstandard`` context
SMALL = 256 * 1024


class Zstd:
    """numcodecs' ``Zstd(level, checksum)`` (``encode(buf)``, ``decode(buf, out)``),
    with chunks up to :data:`SMALL` bytes through ``zstandard`` contexts reused per
    thread. Picklable; safe to share between threads."""

    codec_id = "zstd"

    def __init__(self, level: int = 0, checksum: bool = False):
        self.level = int(level)
        self.checksum = bool(checksum)
        self._big = numcodecs.Zstd(level=self.level, checksum=self.checksum)
        self._local = threading.local()

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.level, self.checksum))

    def __repr__(self) -> str:
        return f"Zstd(level={self.level}, checksum={self.checksum})"

    def _compressor(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "c", None)
        if c is None:
            # level 0 is zstd's default level (3) in both libraries
            c = self._local.c = zstandard.ZstdCompressor(
                level=self.level, write_checksum=self.checksum, write_content_size=True
            )
        return c

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "d", None)
        if d is None:
            d = self._local.d = zstandard.ZstdDecompressor()
        return d

    def encode(self, buf: Any) -> Any:
        """One zstd frame of ``buf``'s bytes (an array or a buffer)."""
        view = _bytes_of(buf)
        if view is None or view.nbytes > SMALL:
            return self._big.encode(buf)
        return self._compressor().compress(view.data)

    def decode(self, buf: Any, out: np.ndarray | None = None) -> Any:
        """The bytes of the frame ``buf``: decoded into ``out`` (an array of exactly the
        decoded size) and returned, or as new bytes without ``out``."""
        dst = _bytes_of(out) if out is not None else None
        if dst is None or dst.nbytes > SMALL:
            return self._big.decode(buf, out=out)
        raw = self._decompressor().decompress(buf, max_output_size=dst.nbytes)
        if len(raw) != dst.nbytes:
            raise ValueError(
                f"a zstd chunk decoded to {len(raw)} bytes where {dst.nbytes} were expected"
            )
        dst[:] = np.frombuffer(raw, np.uint8)
        return out


def _bytes_of(buf: Any) -> np.ndarray | None:
    """``buf``'s bytes as a flat uint8 view (no copy), or None when it has no such view
    (a non-contiguous array)."""
    if isinstance(buf, np.ndarray):
        return buf.reshape(-1).view(np.uint8) if buf.flags.c_contiguous else None
    try:
        return np.frombuffer(buf, np.uint8)
    except (TypeError, ValueError):
        return None


def faster(codec: Any) -> Any:
    """``codec``, or the equivalent :class:`Zstd` when it is numcodecs' ``Zstd``."""
    if type(codec) is numcodecs.Zstd:
        return Zstd(level=codec.level, checksum=codec.checksum)
    return codec

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


#: this thread's contexts, shared by every :class:`Zstd` (a codec object is made per
#: array opened, and a context costs more to set up than a small chunk's whole call)
_LOCAL = threading.local()


def _compressor(level: int, checksum: bool) -> zstandard.ZstdCompressor:
    """This thread's compression context for ``(level, checksum)``."""
    made: dict[tuple[int, bool], zstandard.ZstdCompressor] | None = getattr(_LOCAL, "c", None)
    if made is None:
        made = _LOCAL.c = {}
    c = made.get((level, checksum))
    if c is None:
        # level 0 is zstd's default level (3) in both libraries
        c = made[(level, checksum)] = zstandard.ZstdCompressor(
            level=level, write_checksum=checksum, write_content_size=True
        )
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    """This thread's decompression context."""
    d: zstandard.ZstdDecompressor | None = getattr(_LOCAL, "d", None)
    if d is None:
        d = _LOCAL.d = zstandard.ZstdDecompressor()
    return d


class Zstd:
    """numcodecs' ``Zstd(level, checksum)`` (``encode(buf)``, ``decode(buf, out)``),
    with chunks up to :data:`SMALL` bytes through ``zstandard`` contexts reused per
    thread. Picklable; safe to share between threads."""

    codec_id = "zstd"

    def __init__(self, level: int = 0, checksum: bool = False):
        self.level = int(level)
        self.checksum = bool(checksum)
        self._big = numcodecs.Zstd(level=self.level, checksum=self.checksum)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.level, self.checksum))

    def __repr__(self) -> str:
        return f"Zstd(level={self.level}, checksum={self.checksum})"

    def encode(self, buf: Any) -> Any:
        """One zstd frame of ``buf``'s bytes (an array or a buffer)."""
        view = _bytes_of(buf)
        if view is None or view.nbytes > SMALL:
            return self._big.encode(buf)
        return _compressor(self.level, self.checksum).compress(view.data)

    def decode(self, buf: Any, out: np.ndarray | None = None) -> Any:
        """The bytes of the frame ``buf``: decoded into ``out`` (an array of exactly the
        decoded size) and returned, or as new bytes without ``out``."""
        dst = _bytes_of(out) if out is not None else None
        if dst is None or dst.nbytes > SMALL:
            return self._big.decode(buf, out=out)
        _decode_into(buf, dst)
        return out


def _decode_into(buf: Any, dst: np.ndarray) -> None:
    """Decode the zstd frame ``buf`` into ``dst`` (a flat uint8 array of exactly the
    decoded size) through this thread's context. A frame that names its size is
    streamed into ``dst`` with no intermediate bytes (~2 µs a 64 KiB chunk less than a
    ``decompress`` and a copy); ``ValueError`` when it decodes to another size."""
    size = zstandard.frame_content_size(buf)
    if size == dst.nbytes:
        got = _decompressor().stream_reader(buf).readinto(dst)
        if got == size:
            return
    else:
        raw = _decompressor().decompress(buf, max_output_size=dst.nbytes)
        got = len(raw)
        if got == dst.nbytes:
            dst[:] = np.frombuffer(raw, np.uint8)
            return
    raise ValueError(f"a zstd chunk decoded to {got} bytes where {dst.nbytes} were expected")


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

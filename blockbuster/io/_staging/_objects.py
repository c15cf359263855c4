"""Staging in an object store (``staging=`` a URL, or the default next to a URL output).

Objects are immutable and written whole (a PUT), so the local staging's appended packs
cannot be had. Layout::

    <root>/staging.json          what the staging belongs to (as the local staging)
    <root>/tiles/<batch>/<uuid>.pack
                                 one object per flush of one writer: a table of contents
                                 (each tile's record and where its arrays are), then the
                                 arrays, each compressed on its own (Blosc-LZ4);
                                 ``<batch>`` names the batch that wrote it (its first
                                 tile), see below

A writer (a batch of tiles on one worker thread) buffers its finished tiles in memory
and PUTs them as one object when ``FLUSH_SECONDS`` have passed since its last PUT, when
``FLUSH_BYTES`` are buffered, and when the batch ends. A tile is *finished* exactly
when an object holding it exists: a PUT is atomic, so a killed worker or driver never
leaves half an object, and a resumed run redoes only the tiles that no object holds.

Why not one object per tile: a PUT costs a round trip (10-50 ms on a cloud store) and
is billed per request; a 100,000-tile run would make 100,000 objects, each listed and
opened by every resume and merge. Why not one object per batch: a batch of slow tiles
(a GPU model, seconds per tile) would lose all its finished tiles to a killed worker.
Flushing at most every ``FLUSH_SECONDS`` bounds both: a slow tile is written as soon as
it is done (the time has passed), fast tiles share an object, and a crash loses at most
``FLUSH_SECONDS`` of one writer's work.

A batch of the segment stage asks which of *its* tiles are finished before it starts
(:meth:`ObjectStaging.finished_in`: a batch run again after its worker died skips what it
staged the first time). It lists only its own prefix, ``tiles/<batch>/``: one request,
empty on a first run. Listing all of ``tiles/`` there instead cost every batch a
request per 1,000 objects, so a run made requests in the square of its batches (a
million tiles in 64-tile batches: ~15,600 objects, ~125,000 listings).

Readers list ``tiles/`` and read each new object's table of contents once (a ranged GET;
objects never change, so an object is never read twice for its contents); a tile's
arrays are then fetched with one ranged GET for the names asked. A batch that reads many
tiles asks for them first (:meth:`ObjectStaging.prefetch`): the ranges of its tiles in
one object, and of several objects at once, are fetched together (obstore's
``get_ranges``: ranges less than 1 MiB apart in one request, several in flight), not
one round trip per tile.

Examples
--------
>>> isinstance(FLUSH_SECONDS, float), FLUSH_BYTES >= 1 << 20
(True, True)
"""

from __future__ import annotations

import json
import struct
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from blockbuster.errors import InvalidParameterError

from .._stores import (
    delete_prefix,
    join_url,
    list_prefix,
    read_bytes,
    read_range,
    read_ranges,
    redact,
    write_bytes,
)
from ._format import (
    _CODEC,
    FORMAT,
    PACK_SUFFIX,
    IndexCache,
    IndexedTiles,
    TileIndex,
    _json_default,
    encode_arrays,
)

__all__ = ["ObjectStaging", "FLUSH_SECONDS", "FLUSH_BYTES", "PREFETCH_BYTES"]

#: A writer PUTs its buffered tiles at least this often (seconds) ...
FLUSH_SECONDS = 2.0
#: ... or as soon as this many bytes are buffered.
FLUSH_BYTES = 8 << 20
#: A prefetch holds at most this many bytes (the rest is read tile by tile).
PREFETCH_BYTES = 256 << 20
_MAGIC = b"BBO2"
_HEAD = struct.Struct("<4sI")
_TOC_PROBE = 64 << 10


class _ObjectIndex(TileIndex[tuple[str, int, dict, dict]]):
    """``tile -> (object url, data start, record, array specs)``, from the objects'
    tables of contents; extended on demand (objects never change once there)."""

    def __init__(self, tiles_url: str):
        super().__init__()
        self.tiles_url = tiles_url
        self._seen: set[str] = set()

    def refresh(self, sub: str | None = None) -> None:
        """Read the table of contents of every object under ``tiles/`` (or under its
        ``sub`` prefix) not read before. The caller holds :attr:`lock`."""
        base = join_url(self.tiles_url, sub)
        _, objects = list_prefix(base, recursive=True)
        for obj in objects:
            name = join_url(sub or "", obj["path"]).lstrip("/")
            if not name.endswith(PACK_SUFFIX) or name in self._seen:
                continue
            url = join_url(self.tiles_url, name)
            size = int(obj["size"])
            head = read_range(url, 0, min(size, _TOC_PROBE))
            magic, tlen = _HEAD.unpack(head[: _HEAD.size])
            if magic != _MAGIC:
                raise OSError(
                    f"{redact(url)} is not a blockbuster staging object; remove the staging "
                    f"{redact(self.tiles_url.rpartition('/')[0])} and run again"
                )
            if _HEAD.size + tlen > len(head):
                head = head + read_range(url, len(head), _HEAD.size + tlen)
            toc = json.loads(head[_HEAD.size : _HEAD.size + tlen])
            start = _HEAD.size + tlen
            for n, record, specs, off in toc["tiles"]:
                self.where.setdefault(int(n), (url, start + int(off), record, specs))
            self._seen.add(name)


_INDEXES = IndexCache()


def _index_for(tiles_url: str, generation: str) -> _ObjectIndex:
    return _INDEXES.get((tiles_url, generation), lambda: _ObjectIndex(tiles_url))


class ObjectStaging(IndexedTiles):
    """The staging of one run in an object store; the interface of
    :class:`~blockbuster.io.Staging` (which returns one of these for a URL root)."""

    def __init__(self, root: str, generation: str | None = None):
        self.root = str(root).rstrip("/")
        self._buffer: list[tuple[int, dict, dict, list[bytes], int]] = []
        self._buffered = 0
        self._last_put = time.monotonic()
        self._index: _ObjectIndex | None = None
        # given by a worker's batch (the plan's): staging.json is not read again
        self._generation: str | None = generation or None
        # (object url, first byte, end byte) -> those bytes, fetched ahead by prefetch
        self._fetched: dict[tuple[str, int, int], bytes] = {}
        # the prefix under tiles/ this writer's objects go to (set by finished_in)
        self._batch: str | None = None

    def __enter__(self) -> ObjectStaging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """PUT what is buffered and drop what was fetched ahead (the batch is done)."""
        self.flush()
        self._fetched.clear()

    # -- paths -----------------------------------------------------------------------
    @property
    def tiles_dir(self) -> str:
        return join_url(self.root, "tiles")

    @property
    def info_path(self) -> str:
        return join_url(self.root, "staging.json")

    # -- lifecycle -------------------------------------------------------------------
    def info(self) -> dict[str, Any] | None:
        try:
            data = read_bytes(self.info_path)
            return None if data is None else json.loads(data)
        except ValueError:
            return None

    def prepare(self, info: dict[str, Any]) -> bool:
        """Reuse the staging of the same run (True: a resume), else start a new one.

        Only a staging blockbuster made (its ``staging.json`` is there) is ever deleted;
        objects under ``root`` without one are an error naming ``root``."""
        existing = self.info()
        if (
            existing is not None
            and existing.get("run_key") == info.get("run_key")
            and existing.get("format") == FORMAT
        ):
            self._generation = existing.get("generation")
            return True
        if existing is not None:
            delete_prefix(self.root)
        else:
            prefixes, objects = list_prefix(self.root)
            if prefixes or objects:
                raise InvalidParameterError(
                    f"staging={redact(self.root)!r} holds objects that are not a blockbuster "
                    "staging (no staging.json); choose an empty prefix for the staging"
                )
        info = {**info, "format": FORMAT, "generation": uuid.uuid4().hex}
        write_bytes(self.info_path, json.dumps(info, indent=1, default=str).encode())
        self._generation = info["generation"]
        self._index = None
        return False

    @property
    def generation(self) -> str | None:
        if self._generation is None:
            info = self.info()
            self._generation = info.get("generation") if info else None
        return self._generation

    def verify(self) -> list[int]:
        """Nothing to drop: each object was written whole by one PUT (the store keeps no
        torn writes), so every tile an object holds is complete. Returns ``[]``."""
        return []

    def remove(self) -> None:
        self._buffer.clear()
        delete_prefix(self.root)
        self._index = None

    # -- tiles -----------------------------------------------------------------------
    def _new_index(self) -> _ObjectIndex:
        return _index_for(self.tiles_dir, self.generation or "")

    def _refresh_for(self, idx: Any, tiles: Sequence[int]) -> None:
        """For :meth:`finished_in`: this writer's objects go under the batch's own
        prefix from now on, and that prefix is all that is listed (see the module
        docstring). Objects elsewhere do not count here: a batch's tiles are staged by
        that batch, and the driver's resume (:meth:`finished_tiles`) lists them all."""
        if tiles:
            self._batch = f"b{min(int(n) for n in tiles)}"
            idx.refresh(self._batch)

    def write_tile(
        self, n: int, record: dict[str, Any], arrays: dict[str, np.ndarray] | None = None
    ) -> None:
        """Buffer tile ``n``; PUT the buffer when it is due (see the module docstring).
        The tile is finished once its object is written."""
        specs, blobs, offset = encode_arrays(arrays)
        record = json.loads(json.dumps(record, default=_json_default))
        self._buffer.append((int(n), record, specs, blobs, offset))
        self._buffered += offset
        if self._buffered >= FLUSH_BYTES or time.monotonic() - self._last_put >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """PUT every buffered tile as one object."""
        if not self._buffer:
            return
        toc = []
        parts: list[bytes] = []
        pos = 0
        for n, record, specs, blobs, size in self._buffer:
            toc.append([n, record, specs, pos])
            parts.extend(blobs)
            pos += size
        head = json.dumps({"tiles": toc}, default=_json_default).encode()
        data = b"".join([_HEAD.pack(_MAGIC, len(head)), head, *parts])
        name = join_url(self._batch or "", uuid.uuid4().hex + PACK_SUFFIX).lstrip("/")
        write_bytes(join_url(self.tiles_dir, name), data)
        self._buffer.clear()
        self._buffered = 0
        self._last_put = time.monotonic()

    def read_record(self, n: int) -> dict[str, Any]:
        hit = self._idx().find(n)
        if hit is None:
            raise FileNotFoundError(f"tile {n} is not staged in {redact(self.root)}")
        return dict(hit[2])

    @staticmethod
    def _span(specs: dict, names: Iterable[str] | None) -> tuple[list[str], int, int]:
        """The arrays of ``names`` a tile has, and the byte span ``[lo, hi)`` (from its
        data start) of those stored (``lo == hi``: none is)."""
        wanted = list(specs) if names is None else [k for k in names if k in specs]
        stored = [k for k in wanted if specs[k][1]]
        if not stored:
            return wanted, 0, 0
        lo = min(specs[k][0] for k in stored)
        return wanted, lo, max(specs[k][0] + specs[k][1] for k in stored)

    def prefetch(self, tiles: Iterable[int], names: Iterable[str] | None = None) -> None:
        """Fetch the arrays ``names`` of ``tiles`` now, for the :meth:`read_tile` calls
        that follow (each takes its bytes once): the ranges of one object in one
        ``get_ranges`` call, the objects in parallel; at most :data:`PREFETCH_BYTES`.
        Tiles not staged are left to ``read_tile`` (which says they are missing)."""
        names = None if names is None else tuple(names)
        idx = self._idx()
        by_object: dict[str, list[tuple[int, int]]] = {}
        total = 0
        for n in dict.fromkeys(int(t) for t in tiles):
            hit = idx.find(n)
            if hit is None:
                continue
            url, start, _, specs = hit
            _, lo, hi = self._span(specs, names)
            key = (url, start + lo, start + hi)
            if hi == lo or key in self._fetched or total + hi - lo > PREFETCH_BYTES:
                continue
            by_object.setdefault(url, []).append(key[1:])
            total += hi - lo
        if not by_object:
            return

        def fetch(url: str) -> None:
            spans = by_object[url]
            got = read_ranges(url, [a for a, _ in spans], [b for _, b in spans])
            for (a, b), data in zip(spans, got):
                self._fetched[(url, a, b)] = data

        if len(by_object) == 1:
            fetch(next(iter(by_object)))
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(8, len(by_object))) as pool:
            list(pool.map(fetch, by_object))

    def read_tile(
        self, n: int, names: Iterable[str] | None = None
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Tile ``n``'s record and arrays (those in ``names``, when given): what
        :meth:`prefetch` fetched for them, else one ranged GET for the span of the
        arrays asked."""
        hit = self._idx().find(n)
        if hit is None:
            raise FileNotFoundError(f"tile {n} is not staged in {redact(self.root)}")
        url, start, record, specs = hit
        wanted, lo, hi = self._span(specs, names)
        out: dict[str, np.ndarray] = {}
        buf = b""
        if hi > lo:
            got = self._fetched.pop((url, start + lo, start + hi), None)
            buf = got if got is not None else read_range(url, start + lo, start + hi)
        for name in wanted:
            off, nbytes, dtype, shape = specs[name]
            dt = np.dtype(dtype)
            if nbytes:
                raw = _CODEC.decode(buf[off - lo : off - lo + nbytes])
                out[name] = np.frombuffer(raw, dtype=dt).reshape(shape)
            else:
                out[name] = np.zeros(shape, dtype=dt)
        return dict(record), out

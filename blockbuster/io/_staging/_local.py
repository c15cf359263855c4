"""The staging area of a run: finished tiles appended to a few pack files.

Layout of a staging directory::

    <root>/staging.json        what the staging belongs to (run key, description,
                               generation, format)
    <root>/tiles/<id>.pack     the tiles one writer (a batch of tiles) finished, one
                               record after another: each tile's record, its compacted
                               core labels, and the small arrays the merge needs
                               (boundary faces; halo bands for the overlap merge)

A tile is *finished* exactly when its whole record is in a pack and passes its
checksums. A writer appends each tile with one ``write`` and flushes it before it starts
the next tile, and only ever appends to a pack it created itself, so a run that crashed
at any point (a killed worker leaves at most one cut-off record at the end of its pack,
which readers ignore) and is started again redoes only the unfinished tiles. A pack is
``fsync``-ed (and its directory) when its writer closes it.

Integrity: the header of each record carries an xxh3-64 checksum of itself (in the fixed
head) and one per array (in the header). The index checks the header's on every scan; a
read checks the header and every array it returns, and raises
:class:`~blockbuster.errors.StagingCorruptError` naming the tile rather than return a
wrong byte. :meth:`Staging.verify` checks every byte of every record: it runs when a
staging is resumed, and a record that fails is dropped (a warning names the tile), so
the tile is recomputed.

One authoritative record per tile: when a tile was written twice (Dask ran a batch
again after a worker was lost, with a non-deterministic ``fn``), the first complete
record wins: packs are named by their creation time (nanoseconds, then a random id), and
every reader takes the record of the earliest pack (then the earliest offset in it).

Why packs and not one file per tile: creating a file is the expensive part of a small
write on many filesystems (on this project's CI machine 0.5-0.9 ms per new file in a
busy directory against 0.05-0.2 ms to write its bytes; a metadata-server round trip on
Lustre or GPFS), and one file per tile of a 100,000-tile volume is 100,000 inodes of
someone's quota. A batch of tiles makes one file. Why not a staging zarr array:
zarr-python's per-chunk machinery costs more than the bytes, and nothing but the merge
ever reads a staged tile.

Record format (format 3): ``b"BBT3"``, a little-endian uint32 header length and uint64
xxh3-64 of the header, a JSON header ``{"tile": n, "record": {...}, "arrays": {name:
[offset, nbytes, dtype, shape, xxh3-64]}, "size": total array bytes}`` and the arrays,
each compressed on its own with Blosc-LZ4 (level 1, no shuffle; a tile staged earlier
with the byte shuffle reads the same: Blosc's header says how a blob was made), so a
reader reads and decodes only the arrays it asks for.

Readers find tiles through an index of the packs kept per process and staging
generation, extended when a tile is asked for that it does not know yet.

Examples
--------
>>> import tempfile, numpy as np
>>> st = Staging(tempfile.mkdtemp())
>>> st.prepare({"run_key": "k"})
False
>>> with st:
...     st.write_tile(3, {"n_labels": 2}, {"face": np.arange(4)})
...     st.write_tile(5, {"n_labels": 0})
>>> st.finished_tiles()
[3, 5]
>>> rec, arrays = st.read_tile(3)
>>> rec["n_labels"], arrays["face"].tolist()
(2, [0, 1, 2, 3])
>>> st.prepare({"run_key": "k"})      # the same run again: reused, a resume
True
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

import numpy as np
import xxhash

from blockbuster.errors import StagingCorruptError, StagingCorruptWarning

from .._durable import fsync_dir
from .._places import check_staging, staging_state
from .._stores import is_url
from ._format import (
    _CODEC,
    PACK_SUFFIX,
    IndexCache,
    IndexedTiles,
    TileIndex,
    _json_default,
    encode_arrays,
)

__all__ = ["Staging"]

FORMAT = 3
_MAGIC = b"BBT3"
_HEAD = struct.Struct("<4sIQ")  # magic, header length, xxh3-64 of the header
_sum = xxhash.xxh3_64_intdigest


class _PackIndex(TileIndex[tuple[str, int]]):
    """Where each finished tile's record is: ``tile -> (pack path, offset)``, built by
    reading record headers only; extended on demand (new packs, grown packs)."""

    def __init__(self, tiles_dir: str):
        super().__init__()
        self.tiles_dir = tiles_dir
        self._scanned: dict[str, int] = {}  # pack path -> bytes of whole records seen

    def refresh(self) -> None:
        try:
            names = os.listdir(self.tiles_dir)
        except FileNotFoundError:
            return
        for name in names:
            if name.endswith(PACK_SUFFIX):
                path = os.path.join(self.tiles_dir, name)
                self._scan(path, self._scanned.get(path, 0))

    def _scan(self, path: str, pos: int) -> None:
        if self._scanned.get(path) == -1:
            return  # a corrupt record stopped an earlier scan of this pack
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            return
        with f:
            end = os.fstat(f.fileno()).st_size
            for tile, rpos, stop, _meta in _records(f, path, pos, end):
                if tile is None:  # a corrupt header: nothing after it can be framed
                    self._scanned[path] = -1
                    return
                hit = (path, rpos)
                cur = self.where.get(tile)
                if cur is None or hit < cur:  # the first complete record wins
                    self.where[tile] = hit
                pos = stop
        self._scanned[path] = pos


def _records(
    f: BinaryIO, path: str, pos: int, end: int, *, warn: bool = True
) -> Iterator[tuple[int | None, int, Any, Any]]:  # (tile, start, stop, header)
    """Yield ``(tile, start, stop, header)`` for each complete record of pack ``f`` from
    ``pos`` on; a header that fails its checksum yields ``(None, start, None, None)``
    once (with a warning unless ``warn`` is false) and ends the scan; a record cut off
    at the end ends it quietly."""
    if pos == 0 and end >= 2 and _read_at(f, 0, 2) != _MAGIC[:2]:
        raise OSError(
            f"{path} is not a blockbuster staging pack (format {FORMAT}); remove the "
            f"staging directory {os.path.dirname(os.path.dirname(path))} and run again"
        )
    while pos + _HEAD.size <= end:
        f.seek(pos)
        magic, hlen, hsum = _HEAD.unpack(f.read(_HEAD.size))
        if pos == 0 and magic[:4] != _MAGIC and magic[:3] == _MAGIC[:3]:
            raise OSError(
                f"{path} is a blockbuster staging pack of another format (not {FORMAT}); "
                f"remove the staging directory {os.path.dirname(os.path.dirname(path))} "
                "and run again"
            )
        if magic == _MAGIC and pos + _HEAD.size + hlen > end:
            return  # a record cut off by a crash (or in flight)
        raw = f.read(hlen) if magic == _MAGIC else b""
        meta = None
        if magic == _MAGIC and _sum(raw) == hsum:
            try:
                meta = json.loads(raw)
            except ValueError:
                meta = None
        if meta is None:
            if warn:
                warnings.warn(
                    f"staging pack {path}: the record at byte {pos} fails its checksum; "
                    "it and the records after it in this pack are not used (their tiles "
                    "are recomputed)",
                    StagingCorruptWarning,
                    stacklevel=2,
                )
            yield None, pos, None, None
            return
        stop = pos + _HEAD.size + hlen + int(meta["size"])
        if stop > end:
            return
        yield int(meta["tile"]), pos, stop, meta
        pos = stop


_INDEXES = IndexCache()


def _index_for(tiles_dir: str, generation: str) -> _PackIndex:
    key = (os.path.abspath(tiles_dir), generation)
    return _INDEXES.get(key, lambda: _PackIndex(tiles_dir))


class Staging(IndexedTiles):
    """Staging directory of one run (see the module docstring for the layout); for a
    URL root, an :class:`~blockbuster.io.ObjectStaging` (objects in an
    object store, written whole).

    Writing (:meth:`write_tile`) appends to a pack this object creates on its first
    write; close it (or use it as a context manager) when the batch is done. Inside a
    ``with`` block, packs opened for reading stay open until it ends (a batch reads
    many tiles of few packs); outside one, each read opens and closes its pack.

    ``durable=False`` (a run whose staging and output live in a temporary folder removed
    when the process exits, where no later process can resume from it): packs are not
    ``fsync``-ed when closed. ``generation`` is used by an object store staging only (the
    generation the driver prepared, so that it is not read again); a local staging
    reads its own, which changes when a corrupt record is dropped.
    """

    def __new__(
        cls, root: str | os.PathLike, durable: bool = True, generation: str | None = None
    ) -> Any:
        if cls is Staging and is_url(os.fspath(root)):
            from ._objects import ObjectStaging

            # objects are immutable: no appends; the generation, when the caller knows
            # it, saves reading staging.json
            return ObjectStaging(os.fspath(root), generation=generation)
        return super().__new__(cls)

    def __init__(
        self, root: str | os.PathLike, durable: bool = True, generation: str | None = None
    ):
        self.root = os.fspath(root)
        self.durable = durable
        self._pack: io.FileIO | None = None
        self._index: _PackIndex | None = None
        self._readers: dict[str, Any] | None = None  # pack path -> file, in a with block

    def __enter__(self) -> Staging:
        if self._readers is None:
            self._readers = {}
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pack this object writes to (its records are all complete)."""
        if self._pack is not None:
            try:
                if self.durable:
                    os.fsync(self._pack.fileno())  # stable before anyone relies on it
            finally:
                self._pack.close()
                self._pack = None
            if self.durable:
                fsync_dir(self.tiles_dir)
        readers, self._readers = self._readers, None
        for f in (readers or {}).values():
            f.close()

    # -- paths ---------------------------------------------------------------------
    @property
    def tiles_dir(self) -> str:
        return os.path.join(self.root, "tiles")

    @property
    def info_path(self) -> str:
        return os.path.join(self.root, "staging.json")

    # -- lifecycle -----------------------------------------------------------------
    def info(self) -> dict[str, Any] | None:
        try:
            with open(self.info_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def prepare(self, info: dict[str, Any]) -> bool:
        """Create the staging area, or reuse it when it belongs to the same run.

        Returns True when an existing staging of the same run is reused (a resume).
        An older run's staging (one with blockbuster's manifest) is removed first;
        anything else at ``root`` is never deleted:
        :class:`~blockbuster.errors.OutputExistsError`, before anything is touched.
        """
        state = check_staging(self.root)
        existing = self.info()
        if (
            existing is not None
            and existing.get("run_key") == info.get("run_key")
            and existing.get("format") == FORMAT
            and os.path.isdir(self.tiles_dir)
        ):
            return True
        if state == "ours":
            shutil.rmtree(self.root)
        os.makedirs(self.tiles_dir)
        # a new id each time a staging area is created: caches of results derived from
        # this staging (Prefect task caches, the pack index) name it, so they never
        # outlive it
        info = {**info, "format": FORMAT, "generation": uuid.uuid4().hex}
        tmp = self.info_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(info, f, indent=1, default=str)
        os.replace(tmp, self.info_path)
        self._index = None
        return False

    @property
    def generation(self) -> str | None:
        info = self.info()
        return info.get("generation") if info else None

    def remove(self) -> None:
        """Delete the staging folder (only when its manifest says it is ours)."""
        self.close()
        if staging_state(self.root) == "ours":
            shutil.rmtree(self.root, ignore_errors=True)
        self._index = None

    # -- tiles -----------------------------------------------------------------------
    def _new_index(self) -> _PackIndex:
        return _index_for(self.tiles_dir, self.generation or "")

    def write_tile(
        self, n: int, record: dict[str, Any], arrays: dict[str, np.ndarray] | None = None
    ) -> None:
        """Append tile ``n``'s record and arrays to this writer's pack (one write, then
        a flush); this marks the tile finished."""
        specs, blobs, offset = encode_arrays(arrays, _sum)
        header = json.dumps(
            {"tile": int(n), "record": record, "arrays": specs, "size": offset},
            default=_json_default,
        ).encode()
        if self._pack is None:
            # named by creation time: the earliest pack's record of a tile wins
            name = f"{time.time_ns():020d}-{uuid.uuid4().hex}{PACK_SUFFIX}"
            self._pack = open(os.path.join(self.tiles_dir, name), "ab", buffering=0)
        head = _HEAD.pack(_MAGIC, len(header), _sum(header))
        view = memoryview(b"".join([head, header, *blobs]))
        while view:  # unbuffered: each write goes straight to the OS
            view = view[self._pack.write(view) :]

    def _corrupt(self, n: int, path: str, pos: int, what: str) -> StagingCorruptError:
        return StagingCorruptError(
            f"staged tile {n} ({path}, byte {pos}): {what} fails its checksum, so the "
            "record is not used. Run again with the same staging: a resumed run checks "
            "every record and recomputes this tile",
            tile=n,
        )

    def verify(self) -> list[int]:
        """Check every byte of every record; drop the records that fail.

        A pack holding a record that fails (a flipped byte, a torn write) is rewritten
        without it (under a temporary name, ``fsync``-ed, renamed over the pack), a
        warning names each dropped tile, and the staging gets a new generation (so no
        cached stage result describing the old records is used). Dropped tiles are
        then unfinished: the run recomputes them. Run it before any writer starts.

        Returns
        -------
        list of int
            The tiles whose records were dropped (a corrupt header in a pack drops the
            rest of that pack; those tiles are listed when their headers could be read
            before).
        """
        from concurrent.futures import ThreadPoolExecutor

        try:
            names = sorted(n for n in os.listdir(self.tiles_dir) if n.endswith(PACK_SUFFIX))
        except FileNotFoundError:
            return []
        paths = [os.path.join(self.tiles_dir, n) for n in names]
        with ThreadPoolExecutor(min(8, max(1, len(paths)))) as pool:
            results = list(pool.map(_verify_pack, paths))
        dropped: list[int] = []
        for path, (bad, lost_from) in zip(paths, results):
            for tile, pos in bad:
                warnings.warn(
                    f"staged tile {tile} ({path}, byte {pos}) fails its checksum: it is not "
                    "used, and is recomputed",
                    StagingCorruptWarning,
                    stacklevel=2,
                )
                dropped.append(tile)
            if lost_from is not None:
                warnings.warn(
                    f"staging pack {path}: the record at byte {lost_from} fails its "
                    "checksum; the tiles after it in this pack are recomputed",
                    StagingCorruptWarning,
                    stacklevel=2,
                )
        if dropped or any(lost is not None for _, lost in results):
            info = self.info() or {}
            info["generation"] = uuid.uuid4().hex
            tmp = self.info_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(info, f, indent=1, default=str)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.info_path)
            fsync_dir(self.root)
            self._index = None
        return sorted(dropped)

    def read_record(self, n: int) -> dict[str, Any]:
        return self.read_tile(n, names=())[0]

    def read_tile(
        self, n: int, names: Iterable[str] | None = None
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Tile ``n``'s record and its arrays (only those in ``names``, when given; only
        their bytes are read)."""
        hit = self._idx().find(n)
        if hit is None:
            raise FileNotFoundError(f"tile {n} is not staged in {self.root}")
        path, pos = hit
        readers = self._readers
        f = readers.get(path) if readers is not None else None
        if f is None:
            f = open(path, "rb")
            if readers is not None:
                readers[path] = f
        try:
            f.seek(pos)
            magic, hlen, hsum = _HEAD.unpack(f.read(_HEAD.size))
            raw = f.read(hlen)
            if magic != _MAGIC or _sum(raw) != hsum:
                raise self._corrupt(n, path, pos, "its header")
            meta = json.loads(raw)
            start = pos + _HEAD.size + hlen
            wanted = (
                meta["arrays"].keys()
                if names is None
                else [k for k in names if k in meta["arrays"]]
            )
            out = {}
            for name in wanted:
                off, nbytes, dtype, shape, asum = meta["arrays"][name]
                dt = np.dtype(dtype)
                if nbytes:
                    f.seek(start + off)
                    blob = f.read(nbytes)
                    if _sum(blob) != asum:
                        raise self._corrupt(n, path, pos, f"its array {name!r}")
                    buf = _CODEC.decode(blob)
                    out[name] = np.frombuffer(buf, dtype=dt).reshape(shape)
                else:
                    out[name] = np.zeros(shape, dtype=dt)
        finally:
            if readers is None:
                f.close()
        return meta["record"], out


def _verify_pack(path: str) -> tuple[list[tuple[int, int]], int | None]:
    """Check every record of one pack; rewrite it without those that fail. Returns the
    failing ``(tile, offset)`` and the offset of a corrupt header (None if none)."""
    keep: list[tuple[int, int]] = []
    bad: list[tuple[int, int]] = []
    lost_from = None
    with open(path, "rb") as f:
        end = os.fstat(f.fileno()).st_size
        # quiet here: verify reports what it finds. (Not warnings.catch_warnings: it swaps
        # process-wide filters, and packs are checked on several threads at once, so
        # overlapping exits left "ignore" installed and hid the caller's warnings.)
        records = list(_records(f, path, 0, end, warn=False))
        for tile, start, stop, meta in records:
            if tile is None:
                lost_from = start
                break
            hlen = _HEAD.unpack_from(_read_at(f, start, _HEAD.size))[1]
            base = start + _HEAD.size + hlen
            ok = all(
                not nbytes or _sum(_read_at(f, base + off, nbytes)) == asum
                for off, nbytes, _dt, _shape, asum in meta["arrays"].values()
            )
            if ok:
                keep.append((start, stop))
            else:
                bad.append((tile, start))
        if not bad and lost_from is None:
            return [], None
        tmp = path + ".verify.tmp"
        with open(tmp, "wb") as out:
            for start, stop in keep:
                out.write(_read_at(f, start, stop - start))
            out.flush()
            os.fsync(out.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))
    return bad, lost_from


def _read_at(f: BinaryIO, pos: int, n: int) -> bytes:
    f.seek(pos)
    return f.read(n)

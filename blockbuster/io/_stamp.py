"""Stamps of stored inputs: what on disk identifies an input's pixels, without reading them.

A stamp is a digest of every file of a stored array: for each file, its path relative to
the array's directory, its size, its modification time and its status-change time
(``st_mtime_ns``, ``st_ctime_ns``). Any rewrite of a chunk (or of a shard) changes its
``ctime``, even when its size is the same and its ``mtime`` was set back (``os.utime``
cannot set ``ctime``), so a pixel rewrite in place is seen without hashing pixels:

- zarr v2: the chunk files beside ``.zarray`` (any dimension separator);
- zarr v3: ``zarr.json`` and the chunk files under ``c/`` (or without a prefix);
- a sharded zarr v3 array: its shard files;
- OME-Zarr: the chosen level's array directory (the image group's metadata is stamped
  separately; ``labels/`` is not part of the image);
- TIFF: the file itself (size, ``mtime``, ``ctime`` and inode).

The files are listed and ``stat``-ed by a pool of threads (``stat`` releases the GIL, and
on a network filesystem the round trips overlap). Cost measured by
``bench/input_stamp.py`` (docs/benchmarks.md); a run pays it once, in the driver, when the
input is opened.

A cheaper mode, opt-in with ``BLOCKBUSTER_INPUT_STAMP=metadata``, stamps only the array's
metadata files and directory. Its risk: a chunk rewritten in place (same shape, dtype
and metadata) is *not* seen, so a run over it may resume from the old staging or report
the old output as already complete. Use it only for inputs that are never rewritten in
place (a finished acquisition).

Examples
--------
>>> import os, tempfile, time
>>> d = tempfile.mkdtemp()
>>> with open(os.path.join(d, "0.0"), "wb") as f:
...     _ = f.write(b"abcd")
>>> a = tree_stamp(d)
>>> a["files"], a == tree_stamp(d)
(1, True)
>>> st = os.stat(os.path.join(d, "0.0"))
>>> with open(os.path.join(d, "0.0"), "r+b") as f:   # same size, same mtime afterwards
...     _ = f.write(b"ABCD")
>>> os.utime(os.path.join(d, "0.0"), ns=(st.st_atime_ns, st.st_mtime_ns))
>>> tree_stamp(d)["digest"] != a["digest"]
True
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["tree_stamp", "file_stamp", "stamp_mode", "STAMP_ENV"]

STAMP_ENV = "BLOCKBUSTER_INPUT_STAMP"
_STAT_BATCH = 512


def stamp_mode() -> str:
    """``"chunks"`` (the default: every file) or ``"metadata"`` (opt-in, see module doc)."""
    mode = os.environ.get(STAMP_ENV, "chunks").strip().lower() or "chunks"
    if mode not in ("chunks", "metadata"):
        from blockbuster.errors import InvalidParameterError

        raise InvalidParameterError(
            f"{STAMP_ENV}={mode!r} must be 'chunks' (default: every chunk file is stamped) "
            "or 'metadata' (cheaper; a chunk rewritten in place is not seen)"
        )
    return mode


def _threads() -> int:
    return max(4, min(32, 4 * (os.cpu_count() or 1)))


def _stat_entry(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:  # removed while we looked: the stamp differs from any later one
        return None
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _stat_batch(root: str, rels: list[str]) -> list[tuple[str, tuple[int, int, int] | None]]:
    return [(rel, _stat_entry(os.path.join(root, rel))) for rel in rels]


def _list_dir(root: str, rel: str) -> tuple[list[str], list[str]]:
    files: list[str] = []
    dirs: list[str] = []
    try:
        with os.scandir(os.path.join(root, rel) if rel else root) as it:
            for e in it:
                name = f"{rel}/{e.name}" if rel else e.name
                try:
                    is_dir = e.is_dir(follow_symlinks=True)
                except OSError:
                    is_dir = False
                (dirs if is_dir else files).append(name)
    except OSError:
        pass
    return files, dirs


def tree_stamp(root: str, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Stamp every file under directory ``root`` (see the module docstring).

    Parameters
    ----------
    root : str
        A local directory (a zarr array, or an OME-Zarr level).
    exclude : tuple of str
        Top-level entries to leave out (e.g. ``("labels",)``).

    Returns
    -------
    dict
        ``files`` (count), ``bytes`` (total size), ``newest_mtime_ns`` and ``digest``
        (xxh3-128 over the sorted ``(path, size, mtime_ns, ctime_ns)`` of every file).
    """
    import xxhash

    files: list[str] = []
    with ThreadPoolExecutor(_threads(), thread_name_prefix="blockbuster-stamp") as pool:
        pending = [pool.submit(_list_dir, root, "")]
        while pending:
            fut = pending.pop()
            fs, ds = fut.result()
            files.extend(f for f in fs if f.split("/", 1)[0] not in exclude)
            pending.extend(
                pool.submit(_list_dir, root, d) for d in ds if d.split("/", 1)[0] not in exclude
            )
        files.sort()
        batches = [files[i : i + _STAT_BATCH] for i in range(0, len(files), _STAT_BATCH)]
        stats = [r for part in pool.map(lambda b: _stat_batch(root, b), batches) for r in part]
    h = xxhash.xxh3_128()
    total = 0
    newest = 0
    for rel, st in stats:
        if st is None:
            h.update(f"{rel}\0gone\n".encode())
            continue
        size, mtime, ctime = st
        total += size
        newest = max(newest, mtime)
        h.update(f"{rel}\0{size}\0{mtime}\0{ctime}\n".encode())
    return {
        "files": len(stats),
        "bytes": total,
        "newest_mtime_ns": newest or None,
        "digest": h.hexdigest(),
    }


def file_stamp(path: str) -> dict[str, Any]:
    """Stamp one file (a TIFF): size, ``mtime``, ``ctime`` and inode.

    >>> import tempfile
    >>> p = tempfile.mkstemp()[1]
    >>> sorted(file_stamp(p))
    ['ctime_ns', 'inode', 'mtime_ns', 'size']
    """
    try:
        st = os.stat(path)
    except OSError:
        return {"size": None, "mtime_ns": None, "ctime_ns": None, "inode": None}
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "inode": st.st_ino,
    }

"""Flushing what a run wrote to stable storage before it is declared complete.

A run's output is marked complete by its very last write (the completion record). Before
that, every file and directory of the output is ``fsync``-ed, so that after a power loss
or a kernel crash an output that says "complete" is complete: without it, the completion
record (a small metadata file) can reach the disk before chunk files written earlier.
Staging packs are ``fsync``-ed by their writers when a batch closes them.

The files are synced by a pool of threads (``fsync`` releases the GIL; on a filesystem
that has already written the pages back it returns at once).

Examples
--------
>>> import os, tempfile
>>> d = tempfile.mkdtemp()
>>> with open(os.path.join(d, "c0"), "wb") as f:
...     _ = f.write(b"x")
>>> fsync_tree(d)
2
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

__all__ = ["fsync_dir", "fsync_file", "fsync_tree"]


def fsync_dir(path: str) -> None:
    """``fsync`` a directory, so the files created in it are there after a power loss
    (a no-op where directories cannot be opened, e.g. on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - filesystems without directory fsync
        pass
    finally:
        os.close(fd)


def fsync_file(path: str) -> None:
    """``fsync`` one file (its data and metadata)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # removed meanwhile (a temporary name): nothing to keep
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_files(paths: list[str]) -> None:
    for p in paths:
        fsync_file(p)


def fsync_tree(root: str, threads: int = 16) -> int:
    """``fsync`` every file and directory under ``root`` (``root`` included); returns
    how many were synced. Directories are synced after the files in them."""
    files: list[str] = []
    dirs: list[str] = []
    for here, _subdirs, names in os.walk(root):
        dirs.append(here)
        files.extend(os.path.join(here, n) for n in names)
    if not dirs and os.path.isfile(root):
        files = [root]
    # one task per thread, each a share of the files: a future per file cost more than
    # the fsyncs of a clean output (1,024 chunk files: 0.11 s against 0.045 s)
    n = max(1, min(threads, len(files)))
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(_fsync_files, [files[i::n] for i in range(n)]))
    for d in reversed(dirs):  # deepest first, root last
        fsync_dir(d)
    return len(files) + len(dirs)

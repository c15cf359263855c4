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

The files are listed and ``stat``-ed directory by directory (``os.scandir``) in the
calling thread on a local disk, by a pool of threads on a network filesystem (``stat``
releases the GIL, and the round trips overlap). Which one a path is on comes from the
mount table (Linux: ``/proc/self/mountinfo``, :func:`filesystem_type`); elsewhere, or
for a filesystem type in neither list, from the first entries' speed
(:data:`SLOW_ENTRY_S`). The speed alone misled: an input whose directory had just been
written (16,384 chunk files) was slow for its first entries, the pool took over, and a
pool is 2.5x slower than one thread on a local disk (0.19-0.26 s against 0.08 s for
16,384 files: the threads contend for the GIL between syscalls). Cost measured by
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
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["tree_stamp", "file_stamp", "filesystem_type", "stamp_mode", "STAMP_ENV"]

STAMP_ENV = "BLOCKBUSTER_INPUT_STAMP"


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


#: Filesystem types (as the mount table names them) on this machine's own disks or
#: memory: scanned in the calling thread, whatever the first entries cost.
LOCAL_FS = frozenset(
    "ext2 ext3 ext4 xfs btrfs zfs f2fs jfs reiserfs tmpfs ramfs overlay apfs hfs "
    "ntfs ntfs3 vfat exfat".split()
)
#: ... and those of network and cluster filesystems: scanned by a pool of threads.
NETWORK_FS = frozenset(
    "nfs nfs4 cifs smb3 smbfs lustre gpfs beegfs ceph glusterfs 9p afs panfs wekafs".split()
)


def filesystem_type(path: str, mountinfo: str | None = None) -> str | None:
    r"""The type of the filesystem ``path`` is on, from the mount table (the mount point
    that is the longest prefix of the path's real location), or None when there is no
    mount table to read (not Linux) or no mount holds it. FUSE mounts read as
    ``fuse.<name>`` (``fuse.sshfs``, ``fuse.s3fs``, ...). ``mountinfo``: the text of a
    mount table to read instead of this process's (the path is then taken as given).

    Examples
    --------
    >>> table = ("27 1 254:0 / / rw - ext4 /dev/vda rw\n"
    ...          "90 27 0:50 / /mnt/lab\\040data rw - nfs4 srv:/x rw\n")
    >>> filesystem_type("/mnt/lab data/a.zarr", table), filesystem_type("/home", table)
    ('nfs4', 'ext4')
    """
    if mountinfo is None:
        try:
            with open("/proc/self/mountinfo") as f:
                mountinfo = f.read()
        except OSError:
            return None
        path = os.path.realpath(path)
    best, found = -1, None
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields or len(fields) < 5:
            continue
        sep = fields.index("-")
        if sep + 1 >= len(fields):
            continue
        point = _unescape(fields[4])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:  # the later of two equal mounts wins
            best, found = len(point), fields[sep + 1]
    return found


def _unescape(field: str) -> str:
    """A mountinfo path: space, tab, newline and backslash are written as octal."""
    for code, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, ch)
    return field


def _pooled(root: str) -> bool | None:
    """True: scan ``root`` with a pool (a network filesystem); False: in this thread (a
    local one); None: unknown, decide by the first entries' speed."""
    kind = filesystem_type(root)
    if kind is None:
        return None
    if kind in LOCAL_FS:
        return False
    if kind in NETWORK_FS or kind.startswith("fuse"):
        return True
    return None


#: Below this many seconds per directory entry, listing and ``stat``-ing go on in the
#: calling thread (a local disk: ~6 µs an entry; threads there only add contention for
#: the GIL); above it (a network filesystem, where each ``stat`` is a round trip), the
#: rest of the tree is scanned by a pool of threads.
SLOW_ENTRY_S = 30e-6
#: Entries scanned before the choice is made.
_PROBE_ENTRIES = 256

_Entry = tuple[str, int | None, int | None, int | None]  # (path, size, mtime, ctime)


def _scan_dir(root: str, rel: str, exclude: tuple[str, ...]) -> tuple[list[_Entry], list[str]]:
    """The files of directory ``rel`` (relative to ``root``) with their ``stat``, and its
    subdirectories; top-level names in ``exclude`` are left out."""
    files: list[_Entry] = []
    dirs: list[str] = []
    prefix = f"{rel}/" if rel else ""
    try:
        with os.scandir(os.path.join(root, rel) if rel else root) as it:
            for e in it:
                name = prefix + e.name
                if not rel and name in exclude:
                    continue
                try:
                    is_dir = e.is_dir()  # follows symlinks
                except OSError:
                    is_dir = False
                if is_dir:
                    dirs.append(name)
                    continue
                try:
                    st = e.stat()
                except OSError:  # removed while we looked: the stamp differs from any later one
                    files.append((name, None, None, None))
                else:
                    files.append((name, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    except OSError:
        pass
    return files, dirs


def _scan(root: str, exclude: tuple[str, ...]) -> list[_Entry]:
    """Every file under ``root``: in this thread on a local filesystem, in a pool on a
    network one (:func:`_pooled`); on one of unknown type, in this thread while entries
    are cheap, else (once :data:`SLOW_ENTRY_S` is passed on average) the remaining
    directories in a pool."""
    entries: list[_Entry] = []
    todo = [""]
    seen = 0
    pooled = _pooled(root)
    t0 = time.perf_counter()
    while todo:
        if pooled or (
            pooled is None
            and seen >= _PROBE_ENTRIES
            and time.perf_counter() - t0 > SLOW_ENTRY_S * seen
        ):
            break
        fs, ds = _scan_dir(root, todo.pop(), exclude)
        entries.extend(fs)
        todo.extend(ds)
        seen += len(fs) + len(ds)
    if todo:
        with ThreadPoolExecutor(_threads(), thread_name_prefix="blockbuster-stamp") as pool:
            pending = [pool.submit(_scan_dir, root, d, exclude) for d in todo]
            while pending:
                fs, ds = pending.pop().result()
                entries.extend(fs)
                pending.extend(pool.submit(_scan_dir, root, d, exclude) for d in ds)
    return entries


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

    entries = _scan(root, tuple(exclude))
    entries.sort()
    total = 0
    newest = 0
    lines = []
    for rel, size, mtime, ctime in entries:
        if size is None or mtime is None:
            lines.append(f"{rel}\0gone\n")
            continue
        total += size
        if mtime > newest:
            newest = mtime
        lines.append(f"{rel}\0{size}\0{mtime}\0{ctime}\n")
    return {
        "files": len(entries),
        "bytes": total,
        "newest_mtime_ns": newest or None,
        # one update over the lines is the digest of updating line by line
        "digest": xxhash.xxh3_128("".join(lines).encode()).hexdigest(),
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

"""OutputLock: the exclusive lock on one output, held while a run writes it.

Re-exported by :mod:`blockbuster.deploy`.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from typing import Any

from ._paths import _now, lock_path

__all__ = ["OutputLock"]


class OutputLock:
    """An exclusive, non-blocking lock on one output, held while a run writes it.

    A hidden file next to the output (:func:`lock_path`) locked with ``flock(2)``: the
    kernel releases the lock when its holder exits, also when it crashes or is killed, so
    there is never a stale lock to clean up. The file is removed on release; a process
    that opened the removed file checks, after locking, that the path still names the file
    it locked, and retries otherwise. The file holds who locked it (flow run, host, pid).

    POSIX only. On NFS, Linux emulates ``flock`` with POSIX byte-range locks, which work
    across clients where the mount has locking (NFSv4, or NFSv3 with lockd); with
    ``nolock`` mounts it is local to one machine.

    Examples
    --------
    >>> import tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "labels.zarr")
    >>> a, b = OutputLock(out), OutputLock(out)
    >>> a.acquire({"who": "a"}), b.acquire({"who": "b"}), b.held_by()["who"]
    (True, False, 'a')
    >>> a.release(); b.acquire({"who": "b"})
    True
    >>> b.release()
    """

    def __init__(self, output: str):
        self.output = output
        self.path = lock_path(output)
        self._fd: int | None = None

    def acquire(self, info: dict[str, Any] | None = None) -> bool:
        """Take the lock now, or return False when another holder has it."""
        import fcntl

        if self._fd is not None:
            return True
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o664)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return False
                raise
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous holder removed the file while we waited: retry
        os.ftruncate(fd, 0)
        os.write(
            fd,
            json.dumps(
                {"time": _now(), "host": socket.gethostname(), "pid": os.getpid(), **(info or {})}
            ).encode(),
        )
        self._fd = fd
        return True

    def release(self) -> None:
        """Remove the lock file and unlock (idempotent)."""
        import fcntl

        if self._fd is None:
            return
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def held_by(self) -> dict[str, Any] | None:
        """What the current (or, for a file left by a crashed holder, the last) holder
        wrote into the lock file; None when there is no lock file."""
        try:
            with open(self.path) as f:
                data = json.loads(f.read() or "{}")
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None

    def is_held(self) -> bool:
        """Whether some process holds the lock now (a probe; takes nothing)."""
        import fcntl

        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # closing drops the shared lock
        return False

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

"""OutputLock: the exclusive lock on one output, held while a run writes it.

One lock for every entry point: :func:`blockbuster.tile_process` and
:func:`blockbuster.merge_tile_labels` (so the CLI too) take it for the whole run, and the
deployments' ``segment`` flow takes it before it decides anything. A second *script*
run on the same output **waits** for the first (it then usually finds the output
complete and does nothing), up to ``blockbuster.lock-timeout`` seconds (dask config,
default 3600), logging once who holds it; past that it fails with
:class:`~blockbuster.errors.OutputBusyError` naming the holder. Deployments do not wait:
a ``segment`` run that finds the lock held reports "busy" at once (the holder is
segmenting that output; the next scan looks again).

The lock is reentrant within one thread (a deployment run holds it and calls
``tile_process``, which takes it again).
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import threading
import time
from typing import Any

from blockbuster.errors import OutputBusyError, OutputExistsError

__all__ = ["OutputLock", "lock_path", "hidden_path", "lock_timeout", "DEFAULT_LOCK_TIMEOUT"]

#: Seconds a script run waits for another run's lock on its output by default.
DEFAULT_LOCK_TIMEOUT = 3600.0

# lock path -> [thread id, depth, fd]: locks this process holds (reentrant per thread)
_HELD: dict[str, list] = {}
_HELD_LOCK = threading.Lock()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _store_split(path: str) -> tuple[str, str]:
    """(folder outside any zarr store, name) for hidden files that belong to ``path``.

    For a URL output the folder is a local one (this machine's temporary directory, one
    subfolder per store prefix): the lock keeps two runs of this machine off one output;
    runs on other machines are not seen (an object store has no locks)."""
    from ._stores import is_url

    if is_url(path):
        import hashlib
        import tempfile

        parent, _, name = path.rstrip("/").rpartition("/")
        tag = hashlib.sha256(parent.encode()).hexdigest()[:16]
        return os.path.join(tempfile.gettempdir(), "blockbuster-url-outputs", tag), name
    path = os.path.abspath(path)
    parts = path.split(os.sep)
    for i, p in enumerate(parts[:-1]):
        if p.lower().endswith(".zarr") and i > 0:
            return os.sep.join(parts[:i]) or os.sep, "-".join(parts[i:])
    return os.path.dirname(path), os.path.basename(path)


def hidden_path(output: str, suffix: str) -> str:
    """A hidden file of an output, next to it and outside any zarr store.

    >>> hidden_path("/d/img.zarr/labels/cells", ".blockbuster-lock")
    '/d/.img.zarr-labels-cells.blockbuster-lock'
    """
    parent, name = _store_split(output)
    return os.path.join(parent, f".{name}{suffix}")


def lock_path(output: str) -> str:
    """The lock file of an output: hidden, next to it (outside any zarr store)."""
    return hidden_path(output, ".blockbuster-lock")


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
        self._reentered = False

    def _open(self) -> int:
        """The lock file, opened without following a symbolic link (a planted link
        never makes us create or truncate the file it points to)."""
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o664)
        except OSError as exc:
            if exc.errno == errno.ELOOP or os.path.islink(self.path):
                raise OutputExistsError(
                    f"the lock file {self.path!r} of output {self.output!r} is a symbolic "
                    "link; blockbuster never follows it: remove the link"
                ) from None
            raise

    def acquire(self, info: dict[str, Any] | None = None, *, reentrant: bool = False) -> bool:
        """Take the lock now, or return False when another holder has it.

        ``reentrant``: succeed (without taking anything) when this thread holds the lock
        already through another :class:`OutputLock`.
        """
        if self._fd is not None:
            return True
        with _HELD_LOCK:
            held = _HELD.get(self.path)
            if held is not None:
                if not reentrant or held[0] != threading.get_ident():
                    return False
                held[1] += 1
                self._fd, self._reentered = held[2], True
                return True
        fd = self._take(info)
        if fd is None:
            return False
        with _HELD_LOCK:
            _HELD[self.path] = [threading.get_ident(), 1, fd]
        self._fd, self._reentered = fd, False
        return True

    def wait(self, info: dict[str, Any] | None = None, *, timeout: float | None = None) -> None:
        """Take the lock, waiting up to ``timeout`` seconds (default: dask config
        ``blockbuster.lock-timeout``, else :data:`DEFAULT_LOCK_TIMEOUT`) for its holder.

        Raises
        ------
        OutputBusyError
            Still held after ``timeout`` (a ``TimeoutError``); the message names the holder.
        """
        if timeout is None:
            timeout = lock_timeout()
        deadline = time.monotonic() + timeout
        told = False
        delay = 0.05
        while not self.acquire(info, reentrant=True):
            holder = self.describe_holder()
            if time.monotonic() >= deadline:
                raise OutputBusyError(
                    f"output {self.output!r} is being written by another run ({holder}) and "
                    f"stayed locked for {timeout:g} s; wait for it to finish, or raise dask "
                    "config 'blockbuster.lock-timeout'"
                )
            if not told:
                import logging

                logging.getLogger("blockbuster").warning(
                    "output %s is being written by another run (%s); waiting up to %g s",
                    self.output,
                    holder,
                    timeout,
                )
                told = True
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def describe_holder(self) -> str:
        h = self.held_by() or {}
        return (
            ", ".join(f"{k} {h[k]}" for k in ("flow_run_id", "host", "pid", "time") if h.get(k))
            or "holder unknown"
        )

    def _take(self, info: dict[str, Any] | None) -> int | None:
        import fcntl

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return None
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
        return fd

    def release(self) -> None:
        """Remove the lock file and unlock (idempotent)."""
        import fcntl

        if self._fd is None:
            return
        with _HELD_LOCK:
            held = _HELD.get(self.path)
            if held is not None and held[2] == self._fd:
                held[1] -= 1
                if held[1] > 0:
                    self._fd = None
                    return
                del _HELD[self.path]
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
        with _HELD_LOCK:
            if self.path in _HELD:
                return True
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
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

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_timeout() -> float:
    """Seconds a script run waits for another run's lock (dask config
    ``blockbuster.lock-timeout``, default :data:`DEFAULT_LOCK_TIMEOUT`)."""
    import dask

    return float(dask.config.get("blockbuster.lock-timeout", DEFAULT_LOCK_TIMEOUT))

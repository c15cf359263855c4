"""One local cluster per process, shared by every call that has no client of its own.

Starting a local cluster of worker processes costs 1-3.5 s on a 2-core machine, more
than a whole small run. So the first ``tile_process`` / ``merge_tile_labels`` call of a
process that finds no ``distributed.Client`` starts one, in a background thread while
the call opens the image and plans, and every later call without a client reuses it.
It is closed when the interpreter exits, by :func:`close_local_cluster`, or at the end
of a ``with local_cluster():`` block.

- A user's client always wins: when ``distributed.default_client()`` finds one, no
  local cluster is started or used, and the user's client is never replaced.
- The shared cluster's client is not made the default client (``set_as_default=False``):
  a user's own ``dask`` computations after a call still run where they ran before it.
- Its size follows :func:`~blockbuster.cluster.make_local_cluster`: one single-threaded
  worker per allocated CPU, or one per GPU with ``use_gpu``. A call that needs the other
  kind (GPU after CPU, or the reverse) closes it and starts the kind it needs.
- A cluster that has gone away (closed by someone else, or its scheduler lost) is
  replaced on the next call; a worker that dies is restarted by its nanny.

Examples
--------
>>> from blockbuster.cluster import close_local_cluster, shared_cluster_info
>>> close_local_cluster()           # nothing to close: a no-op
False
>>> shared_cluster_info() is None
True
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

from ._local import (
    _quiet_teardown,
    _shield_main_script,
    _start_cluster,
    _unshield_main_script,
    gpu_info,
)

__all__ = [
    "RunCluster",
    "close_local_cluster",
    "local_cluster",
    "shared_cluster_info",
    "start_local_cluster",
    "user_client",
]

log = logging.getLogger("blockbuster")

_LOCK = threading.RLock()
_STATE: dict[str, Any] = {"shared": None, "atexit": False, "started": 0}


def user_client():
    """The user's current ``distributed.Client`` (``default_client()``), or None."""
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return default_client()
    except ValueError:
        return None


def _kind(use_gpu: bool | str) -> str:
    if use_gpu is True:
        return "gpu"
    if use_gpu == "auto":
        return "gpu" if gpu_info() else "cpu"
    return "cpu"


class _Shared:
    """The process's local cluster: started in a thread, waited for by :meth:`client`."""

    def __init__(self, use_gpu: bool | str, kwargs: dict[str, Any]):
        self.use_gpu = use_gpu
        self.kind = _kind(use_gpu)
        self.kwargs = dict(kwargs)
        self.pid = os.getpid()
        self._client: Any = None
        self._cluster: Any = None
        self._error: BaseException | None = None
        self._main_spec: Any = None
        self._ready = False
        self._thread = threading.Thread(
            target=self._start, name="blockbuster-local-cluster", daemon=True
        )
        self._thread.start()

    def _start(self) -> None:
        try:
            self._main_spec = _shield_main_script()
            cluster = _start_cluster(use_gpu=self.use_gpu, **self.kwargs)
            # not the default client: a user's own dask computations after a call still
            # run where they ran before it (make_local_cluster's client is the default)
            from distributed import Client

            self._client, self._cluster = Client(cluster, set_as_default=False), cluster
        except BaseException as exc:  # re-raised by client()
            self._error = exc

    def client(self):
        """The client, once the cluster is up (raises what its start raised)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        if not self._ready:
            self._client.wait_for_workers(1)
            self._ready = True
        return self._client

    def alive(self) -> bool:
        if self.pid != os.getpid() or self._error is not None:
            return False
        if self._thread.is_alive():
            return True  # still starting
        c, cl = self._client, self._cluster
        return (
            c is not None
            and getattr(c, "status", None) == "running"
            and str(getattr(cl, "status", "running")).lower().endswith("running")
        )

    def n_workers(self) -> int:
        try:
            return len(self._cluster.scheduler_info.get("workers", {}))
        except Exception:  # pragma: no cover
            return 0

    def close(self) -> None:
        self._thread.join()
        if self._client is not None and self.pid == os.getpid():
            try:  # our own cluster is going away: its workers need not say so
                self._client.run(_quiet_teardown, wait=True)
            except Exception:  # pragma: no cover
                pass
        for obj in (self._client, self._cluster):
            if obj is not None:
                try:
                    obj.close()
                except Exception:  # pragma: no cover
                    pass
        self._client = self._cluster = None
        _unshield_main_script(self._main_spec)


def start_local_cluster(use_gpu: bool | str = False, **kwargs: Any) -> _Shared:
    """The process's shared local cluster, started in the background if there is none
    (or the one there is has the wrong kind, other ``kwargs``, or has gone away).

    Returns at once; its ``client()`` waits for the cluster. ``kwargs`` go to
    :func:`~blockbuster.cluster.make_local_cluster`; without any, an existing cluster of
    the right kind is reused whatever it was started with.
    """
    kind = _kind(use_gpu)
    with _LOCK:
        cur: _Shared | None = _STATE["shared"]
        if cur is not None:
            if cur.alive() and cur.kind == kind and (not kwargs or kwargs == cur.kwargs):
                return cur
            if cur.pid == os.getpid():
                why = "it has gone away" if not cur.alive() else f"this call needs {kind}"
                log.info("closing blockbuster's local %s cluster (%s)", cur.kind, why)
                cur.close()
            _STATE["shared"] = None
        if not _STATE["atexit"]:
            atexit.register(close_local_cluster)
            _STATE["atexit"] = True
        cur = _Shared(use_gpu, kwargs)
        _STATE["shared"] = cur
        _STATE["started"] += 1
        return cur


def close_local_cluster() -> bool:
    """Close the local cluster blockbuster started for calls without a client.

    Returns True when there was one. The next call without a client starts a new one.
    Never touches a client or cluster the user made.

    Examples
    --------
    >>> import blockbuster
    >>> blockbuster.close_local_cluster()
    False
    """
    with _LOCK:
        cur: _Shared | None = _STATE["shared"]
        _STATE["shared"] = None
    if cur is None or cur.pid != os.getpid():
        return False
    cur.close()
    return True


@contextlib.contextmanager
def local_cluster(use_gpu: bool | str = False, **kwargs: Any) -> Iterator[Any]:
    """Start blockbuster's local cluster now, use it for the calls inside the block, and
    close it at the end of the block.

    Yields the cluster's ``distributed.Client`` (not made the default client). Calls
    inside the block that find no client of the user's reuse this cluster; ``kwargs``
    go to :func:`~blockbuster.cluster.make_local_cluster` (e.g. ``n_workers``).

    Examples
    --------
    >>> import blockbuster
    >>> with blockbuster.local_cluster(n_workers=1) as client:   # doctest: +SKIP
    ...     a = blockbuster.tile_process(img, fn, compute=True)
    ...     b = blockbuster.tile_process(img2, fn, compute=True)  # same cluster
    """
    shared = start_local_cluster(use_gpu, **kwargs)
    try:
        yield shared.client()
    finally:
        with _LOCK:
            if _STATE["shared"] is shared:
                _STATE["shared"] = None
        shared.close()


def shared_cluster_info() -> dict[str, Any] | None:
    """The shared local cluster (``kind``, ``n_workers``, ``scheduler``, ``started``: how
    many this process has started), or None when there is none."""
    with _LOCK:
        cur: _Shared | None = _STATE["shared"]
        started = _STATE["started"]
    if cur is None or not cur.alive():
        return None
    client = cur.client()
    return {
        "kind": cur.kind,
        "n_workers": cur.n_workers(),
        "scheduler": client.scheduler.address,
        "started": started,
    }


class RunCluster:
    """The cluster one call runs on: the user's client when there is one, else the
    shared local cluster (started in the background here, when needed).

    ``client()`` waits for it; ``close()`` leaves the shared cluster running for the next
    call (it is closed at exit or by :func:`close_local_cluster`).
    """

    def __init__(self, use_gpu: bool | str = False):
        self.use_gpu = use_gpu
        self._user = user_client()
        self._shared = None if self._user is not None else start_local_cluster(use_gpu)

    @property
    def owned(self) -> bool:
        """True when the call runs on blockbuster's own local cluster."""
        return self._shared is not None

    def client(self):
        if self._user is not None:
            return self._user
        assert self._shared is not None  # no user client: ours was started
        return self._shared.client()

    def close(self) -> None:
        """Nothing to close per call (the shared cluster outlives it)."""

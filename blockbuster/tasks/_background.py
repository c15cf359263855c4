"""Reporting API calls sent from one background thread, so the flow never waits on them.

Each artifact call is a request to the Prefect API (20-60 ms on a busy 2-core machine).
Made in the flow's thread they sit between one stage and the next; the progress
updates, the progress artifact's creation and the per-tile table are not needed by any
stage, so a run sends them from one thread, in the order they were asked for, in the
flow's context (so they are attached to its flow run). When the run is over the API
call hands the thread its last calls and returns (:meth:`Reporter.close` with
``wait=False``): the artifacts land a few tens of milliseconds later, and a Python
process waits for the thread before it exits. The next run in the process first waits
for them (:func:`wait_for_closed`): Prefect's SQLite server answers a write that meets
another in flight with 503, and its client retries after ~2 s, so a flow run created
while the last run's artifacts were being written started 2 s late (11 of 30
back-to-back small merges did; 0 of 30 with the wait). A failed report is logged and
never fails a run.

The thread uses its own Prefect client: the flow's client, which the copied context
names, is closed when the flow ends, and the last report may be sent after that.

Examples
--------
>>> r = Reporter()
>>> got = []
>>> for i in (1, 2):
...     _ = r.submit(got.append, i)
>>> r.flush()
>>> got
[1, 2]
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as _wait
from typing import Any

__all__ = ["Reporter", "reports_are_seen", "wait_for_closed"]

log = logging.getLogger("blockbuster")

# the unfinished calls of reporters closed without waiting (see wait_for_closed)
_CLOSED: list[Future] = []
_CLOSED_LOCK = threading.Lock()


def wait_for_closed(timeout: float = 10.0) -> None:
    """Wait (at most ``timeout`` s) for the calls that closed reporters still had to send.

    Called before a run creates its flow run, so that the previous run's last artifacts
    are not written at the same moment (module docstring).
    """
    with _CLOSED_LOCK:
        pending = [f for f in _CLOSED if not f.done()]
        _CLOSED[:] = pending
    if pending:
        _wait(pending, timeout=timeout)


_HOOKED: dict[str, Any] = {"worker": None}


def _start_events_worker() -> None:
    """Start Prefect's events worker now, while the run is going, and make sure the last
    reports are sent before it stops at interpreter exit.

    Creating an artifact emits an event through Prefect's events worker, which drains
    and stops itself in a ``threading`` exit hook (those run before non-daemon threads
    are joined, last registered first). A call returns without waiting for its last
    artifacts, and a script may end right after it: without a hook of ours registered
    after the worker's, the worker stops first and the reporter's next event has to
    start a new one during shutdown, which fails ("can't register atexit after
    shutdown") with a logged traceback.
    """
    try:
        from prefect.events.utilities import should_emit_events
        from prefect.events.worker import EventsWorker

        if not should_emit_events():
            return
        worker = EventsWorker.instance()
        if worker is not _HOOKED["worker"]:
            _HOOKED["worker"] = worker
            threading._register_atexit(_finish_reports)  # type: ignore[attr-defined]
    except Exception:  # pragma: no cover - reporting must never break a run
        log.debug("starting Prefect's events worker failed", exc_info=True)


def _finish_reports() -> None:  # pragma: no cover - runs at interpreter exit
    wait_for_closed(timeout=30.0)


def reports_are_seen() -> bool:
    """Whether anyone can see what a run reports to Prefect from this thread: it reports
    to a configured server (``PREFECT_API_URL``, or the server of ``blockbuster up``,
    which points the calling thread's settings at itself). Prefect's temporary server
    serves no UI and is gone when the process exits: a run reporting there publishes
    no artifacts (:class:`Reporter` with ``publish=False``) and its server records no
    task runs (``tasks/_prefect_compat.py``).

    Examples
    --------
    >>> from prefect.settings import PREFECT_API_URL, temporary_settings
    >>> with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
    ...     reports_are_seen()
    True
    """
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


class Reporter:
    """A single background thread for a run's reporting calls (see the module docstring).

    With ``publish=False`` (nobody can see the run's reports: :func:`reports_are_seen`)
    nothing submitted runs: each call's future is done at once, with ``None``. A warm
    16-tile call sent three artifacts (~0.1 s of HTTP calls in this thread, beside the
    relabel stage's threads) to a server nobody could read.
    """

    def __init__(self, publish: bool = True) -> None:
        self.publish = publish
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future] = []
        self._client_ctx: Any = None  # used from the reporter thread only

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` after everything submitted before, in the caller's
        context (contextvars), in the background; nothing when the reporter does not
        publish."""
        if not self.publish:
            done: Future = Future()
            done.set_result(None)
            return done
        ctx = contextvars.copy_context()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="blockbuster-report")
            self._futures.append(self._pool.submit(ctx.run, _start_events_worker))
        fut = self._pool.submit(ctx.run, self._guard, fn, *args, **kwargs)
        self._futures.append(fut)
        return fut

    def _use_own_client(self) -> None:
        try:
            from prefect.context import SyncClientContext
        except ImportError:  # pragma: no cover
            return
        if SyncClientContext.get() is None and self._client_ctx is None:
            return  # no Prefect client in play
        # in this call's copied context only; Prefect types the variable without its
        # initial None
        SyncClientContext.__var__.set(None)  # type: ignore[arg-type]
        if self._client_ctx is None:
            from ._prefect_compat import prefect_client_context

            self._client_ctx = prefect_client_context()
            self._client_ctx.__enter__()
        SyncClientContext.__var__.set(self._client_ctx)

    def _close_client(self) -> None:
        if self._client_ctx is not None:
            ctx, self._client_ctx = self._client_ctx, None
            try:
                ctx.client.__exit__(None, None, None)
            except Exception:  # pragma: no cover
                log.debug("closing the reporter's Prefect client failed", exc_info=True)

    def _guard(self, fn, *args, **kwargs):
        try:
            self._use_own_client()
            return fn(*args, **kwargs)
        except Exception:  # reporting must never break a run
            log.warning(
                "could not publish a report to Prefect (%s)",
                getattr(fn, "__name__", fn),
                exc_info=True,
            )
            return None

    def close(self, wait: bool = True, timeout: float = 60.0) -> None:
        """Stop the thread once every submitted call has run; with ``wait``, wait for
        that (at most ``timeout`` seconds)."""
        futures, self._futures = self._futures, []
        if self._pool is None:
            return
        futures.append(self._pool.submit(self._close_client))
        self._pool.shutdown(wait=False)  # queued calls still run
        self._pool = None
        if wait:
            _wait(futures, timeout=timeout)
        else:
            with _CLOSED_LOCK:
                _CLOSED[:] = [f for f in _CLOSED if not f.done()] + futures

    def flush(self, timeout: float = 60.0) -> None:
        """Wait for every submitted call, then stop the thread (``close(wait=True)``)."""
        self.close(wait=True, timeout=timeout)

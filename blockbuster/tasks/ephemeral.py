"""Starting Prefect's temporary API server (ephemeral mode) so that it never outlives us.

With no ``PREFECT_API_URL``, the first Prefect client of a process starts a temporary
API server: a ``uvicorn`` child process. Two things about that start matter here:

- Its first start on a fresh ``PREFECT_HOME`` creates and migrates the SQLite
  database: 18.6-21.6 s on a 2-core machine (measured, three fresh homes), against
  Prefect's default ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` of 20 s. Later
  starts take 4-8 s.
- When the start times out, Prefect raises but leaves the child running, and the next
  client starts a second one. The first child is then never stopped: it keeps the
  parent's stdout and stderr open, so a shell pipeline or ``subprocess.run(...,
  capture_output=True)`` waits forever for a command that has long exited (CI saw
  exactly this: a 9-tile run finished in 36.6 s, then its caller waited 300 s).

:func:`ensure_api` starts the server itself, once per process, with a timeout that
covers a first start (:data:`STARTUP_TIMEOUT`, unless the user set Prefect's setting),
stops the child if the start fails, and raises an error that says what to do. Later
clients find the server running and use it.
"""

from __future__ import annotations

import logging
import threading

from ..errors import PrefectUnavailableError

__all__ = ["ensure_api", "startup_timeout", "STARTUP_TIMEOUT"]

log = logging.getLogger("blockbuster")

#: seconds a temporary server may take to start when the user has not set
#: ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` (a first start measured 18.6-21.6 s)
STARTUP_TIMEOUT = 120.0

_LOCK = threading.Lock()


def startup_timeout() -> float:
    """Seconds to wait for the temporary server: the user's Prefect setting when set,
    else :data:`STARTUP_TIMEOUT`.

    Examples
    --------
    >>> from prefect.settings import temporary_settings
    >>> from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as T
    >>> with temporary_settings({T: 45}):
    ...     startup_timeout()
    45.0
    """
    from prefect.settings import get_current_settings
    eph = get_current_settings().server.ephemeral
    if "startup_timeout_seconds" in eph.model_fields_set:
        return float(eph.startup_timeout_seconds)
    return STARTUP_TIMEOUT


def ensure_api() -> str | None:
    """Start Prefect's temporary API server if this process needs one; return its URL.

    Returns None when an API URL is configured (a real server: nothing to start) or
    when ephemeral mode is switched off (Prefect itself then explains what is missing).
    Safe to call from several threads; the server starts once per process.

    Raises
    ------
    PrefectUnavailableError
        The server did not answer within :func:`startup_timeout` seconds, or its
        process failed. The process has been stopped.
    """
    from prefect.settings import get_current_settings
    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return None
    from prefect.server.api.server import SubprocessASGIServer
    with _LOCK:
        server = SubprocessASGIServer()
        if server.running:
            return server.api_url
        timeout = startup_timeout()
        try:
            server.start(timeout=int(timeout) if timeout >= 1 else 1)
        except Exception as exc:
            # Prefect leaves the child running after a failed start (module docstring)
            try:
                server.stop()
            except Exception:  # pragma: no cover - already gone
                log.debug("stopping the failed temporary server", exc_info=True)
            raise PrefectUnavailableError(
                f"Prefect's temporary API server did not start within {timeout:g} s "
                f"({type(exc).__name__}: {str(exc)[:200]}). A first start on a new "
                "PREFECT_HOME migrates its database and can take tens of seconds on a "
                "busy machine: raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, "
                "or start a server once (`prefect server start`) and set "
                "PREFECT_API_URL to it") from exc
        return server.api_url

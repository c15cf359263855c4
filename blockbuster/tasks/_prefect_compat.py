"""Every workaround over Prefect's internals, in one place, with what it was checked on.

Checked against prefect 3.9.1 (the version the benchmarks ran on) and the lowest
version pyproject.toml declares; each item names the behaviour it works around, so it
can be dropped when Prefect changes it:

1. :func:`ensure_api`: Prefect's temporary server (``SubprocessASGIServer``) started by
   us, with a longer timeout, and stopped when its start fails (below).
2. :func:`ephemeral_run_settings`: a ``SettingsContext`` with flow-run heartbeats and
   logs to the API off, for runs against a temporary server.
3. :func:`prefect_client_context` / :func:`prefect_tls_context`: one TLS context per
   process handed to Prefect's client through ``SyncClientContext``, whose private
   ``_httpx_settings`` is reset so that Prefect's own callers share the client.

Starting Prefect's temporary API server (ephemeral mode) so that it never outlives us.

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

Also here, for the runs of :mod:`blockbuster.api`: :func:`warm_up` (the API started and
checked in a background thread while the cluster starts) and
:func:`ephemeral_run_settings` (no flow-run heartbeats and no logs sent to a temporary
server).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

from blockbuster.errors import PrefectUnavailableError

__all__ = [
    "ensure_api",
    "startup_timeout",
    "STARTUP_TIMEOUT",
    "warm_up",
    "ephemeral_run_settings",
    "prefect_tls_context",
    "prefect_client_context",
]

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
            with _temporary_server_settings():
                server.start(timeout=int(timeout) if timeout >= 1 else 1)
            _SERVER_CSRF[server.api_url] = _asks_for_csrf_tokens(server.api_url)
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
                "PREFECT_API_URL to it"
            ) from exc
        return server.api_url


#: Whether each temporary server :func:`ensure_api` started protects with CSRF tokens,
#: by its API URL: asked of the server once when it starts (what it protects depends on
#: the settings and the environment it was started with, which this process's
#: settings may no longer show).
_SERVER_CSRF: dict[str, bool] = {}


def _asks_for_csrf_tokens(api_url: str) -> bool:
    """Whether the Prefect server at ``api_url`` wants CSRF tokens (when in doubt: yes).
    One request: a server without CSRF protection answers 422 "CSRF protection is
    disabled" when asked for a token."""
    import httpx

    try:
        r = httpx.get(f"{api_url}/csrf-token", params={"client": "blockbuster"}, timeout=10)
    except Exception:  # no answer: the flow run reports a server that is gone
        return True
    return not (r.status_code == 422 and "disabled" in r.text.lower())


def _temporary_server_wants_csrf() -> bool:
    """Whether the running temporary server wants CSRF tokens: yes unless
    :func:`ensure_api` started it and it said no."""
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    return not server.running or _SERVER_CSRF.get(server.api_url, True)


#: Services of Prefect's server that a temporary server (no UI, gone at exit) runs for
#: nobody: the event persister (the UI's event feed), the triggers (automations, which
#: it has none of) and the task run recorder (the task runs the UI lists). The first
#: two write to its SQLite database beside the run's own writes; a flow run created
#: while they write was answered 503 and retried 2 s later (the second of two
#: back-to-back default calls stalled in 2 of 6 processes with one core busy elsewhere;
#: 0 of 8 with them off). The recorder turned each task run's events into rows: a third
#: of the server's CPU in a warm 16-tile call (0.26-0.40 -> 0.13-0.19 CPU s per call
#: without it), on the cores the run's workers share. Nothing a run does reads them
#: back (task caching reads result records, not the database). A user's own setting
#: is kept.
_IDLE_SERVICES = {
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED": (
        "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED",
        "PREFECT_API_SERVICES_EVENT_PERSISTER_ENABLED",
    ),
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": (
        "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED",
        "PREFECT_API_SERVICES_TRIGGERS_ENABLED",
    ),
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED": (
        "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED",
        "PREFECT_API_SERVICES_TASK_RUN_RECORDER_ENABLED",
    ),
}


@contextlib.contextmanager
def _temporary_server_settings():
    """The settings Prefect's temporary server is started with (its process takes them
    from the current settings): :data:`_IDLE_SERVICES` off, unless the user set them."""
    import os

    import prefect.settings
    from prefect.settings import temporary_settings

    updates: dict[Any, Any] = {}
    for name, aliases in _IDLE_SERVICES.items():
        setting = getattr(prefect.settings, name, None)  # older releases may lack one
        if setting is not None and not any(a in os.environ for a in aliases):
            updates[setting] = False
    with temporary_settings(updates):
        yield


def warm_up(errors: list) -> None:
    """Start Prefect's API (the temporary server in ephemeral mode) now, in this thread.

    Once per process and API URL: after that the flow run itself talks to the API (a
    health check costs ~25 ms, a new client with its TLS context included). A temporary
    server that does not start is an error for the run (appended to ``errors``, see
    :func:`ensure_api`); a failed health check is left to the flow run.
    """
    try:
        ensure_api()
    except Exception as exc:
        errors.append(exc)
        return
    try:
        from prefect.settings import get_current_settings

        url = get_current_settings().api.url
        if url in _WARM:
            return
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True, httpx_settings={"verify": prefect_tls_context()}) as c:
            c.api_healthcheck()
        _WARM.add(url)
    except Exception:  # pragma: no cover - the flow run reports real problems itself
        log.debug("Prefect API warm-up failed", exc_info=True)


_WARM: set = set()


@contextlib.contextmanager
def ephemeral_run_settings():
    """A run against Prefect's temporary server (no API URL configured): no flow-run
    heartbeats, its logs are not sent to the server, and its client asks the server
    for no CSRF token (a request per call, answered "CSRF protection is disabled") when
    :func:`ensure_api` started that server and it said it wants none (asked once: what
    it protects depends on the environment it started with, which the settings of this
    process may not show).

    Heartbeats let a long-lived server notice crashed runs; a temporary server dies with
    this process, so they only cost time: the heartbeat thread is joined at the end of
    every flow run with a 1 s sleep granularity (measured: an empty flow run takes
    1.1 s with heartbeats, 0.1 s without). Its logs would go to a server that serves no
    UI and is gone at exit (a batch of them, a POST per call, ~40 ms on a busy 2-core
    machine); they still go to the console. With a server the user configured
    (``PREFECT_API_URL``) both stay as configured, as does a user's own
    ``PREFECT_LOGGING_TO_API_ENABLED``; runs that report to ``blockbuster up``'s server
    have no heartbeats either (:func:`use_local_server`).
    The changed settings object is built once per settings object (building one takes
    ~0.1 s of pydantic validation, which a warm small run notices).
    """
    import os

    import prefect.context
    import prefect.settings

    ctx = prefect.context.get_settings_context()
    if ctx.settings.api.url:
        yield
        return
    # Setting objects, not their dotted names: older Prefect 3 releases take only Setting
    # keys; versions without flow heartbeats have nothing to turn off
    updates: dict[Any, Any] = {}
    heartbeat = getattr(prefect.settings, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY", None)
    if heartbeat is not None:
        updates[heartbeat] = None
    to_api = getattr(prefect.settings, "PREFECT_LOGGING_TO_API_ENABLED", None)
    if to_api is not None and "PREFECT_LOGGING_TO_API_ENABLED" not in os.environ:
        updates[to_api] = False
    # the temporary server protects nothing with CSRF tokens unless the user turned it
    # on: a new client would ask it for one, to be told so (asked once, when it started)
    csrf = getattr(prefect.settings, "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED", None)
    if (
        csrf is not None
        and "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED" not in os.environ
        and not _temporary_server_wants_csrf()
    ):
        updates[csrf] = False
    if not updates:
        yield
        return
    key = (id(ctx.settings), tuple(sorted(s.name for s in updates)))
    base, changed = _EPHEMERAL_SETTINGS.get(key, (None, None))
    if base is not ctx.settings:
        base, changed = (ctx.settings, ctx.settings.copy_with_update(updates=updates))
        _EPHEMERAL_SETTINGS.clear()
        _EPHEMERAL_SETTINGS[key] = (base, changed)
    with prefect.context.SettingsContext(profile=ctx.profile, settings=changed):
        yield


_EPHEMERAL_SETTINGS: dict[tuple, tuple[Any, Any]] = {}


_SSL: dict[tuple, Any] = {}


def prefect_tls_context():
    """The TLS context a Prefect client would build for itself, built once per process.

    Every new Prefect client otherwise loads the CA bundle into a new ``SSLContext``
    (~25 ms of CPU, measured; two clients per run), even for the plain-HTTP temporary
    server. Same choices as Prefect's: ``PREFECT_API_TLS_INSECURE_SKIP_VERIFY``, else
    ``PREFECT_API_SSL_CERT_FILE`` or certifi's bundle.
    """
    import ssl

    from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_TLS_INSECURE_SKIP_VERIFY

    insecure = bool(PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value())
    cert_file = None if insecure else (PREFECT_API_SSL_CERT_FILE.value() or None)
    key = (insecure, cert_file)
    ctx = _SSL.get(key)
    if ctx is None:
        if insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            import certifi

            ctx = ssl.create_default_context(cafile=cert_file or certifi.where())
        _SSL[key] = ctx
    return ctx


def prefect_client_context():
    """A new ``SyncClientContext`` (enter it to use it) whose client reuses this
    process's TLS context (:func:`prefect_tls_context`). Entered around a flow call, the
    flow engine uses its client instead of building one."""
    from prefect.context import SyncClientContext

    ctx = SyncClientContext(httpx_settings={"verify": prefect_tls_context()})
    # get_client() hands out a context's client only to callers asking for the same
    # httpx settings, and Prefect's own callers ask for none: so that they all share
    # this client, the context must read as built without settings.
    try:
        ctx._httpx_settings = None
    except Exception:  # pragma: no cover - a Prefect without the attribute
        return SyncClientContext()
    return ctx

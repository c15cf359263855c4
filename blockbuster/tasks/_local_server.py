"""A local Prefect server kept in the background (``blockbuster up`` / ``down``) that the
runs of this machine report to.

Without it, every Python process that runs a flow starts Prefect's temporary server
(4-8 s, 18-22 s on a fresh ``PREFECT_HOME``) and the runs vanish with it. ``blockbuster
up`` starts ``prefect server start`` on 127.0.0.1 in its own session, waits until it
answers, and records it in ``$PREFECT_HOME/blockbuster-server.json`` (pid, URL, log
file). From then on, a run with no ``PREFECT_API_URL`` of its own (:func:`use_local_server`)
reports to that server: its flow runs and artifacts stay visible in the UI, and no
temporary server is started. ``blockbuster down`` stops it (by its pid, after checking
that the pid is still that server). Without ``up``, nothing changes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from blockbuster.errors import PrefectUnavailableError

__all__ = [
    "STATE_FILE",
    "local_server",
    "start_local_server",
    "stop_local_server",
    "use_local_server",
]

STATE_FILE = "blockbuster-server.json"
DEFAULT_PORT = 4200


def _home() -> str:
    from prefect.settings import get_current_settings

    return os.path.expanduser(str(get_current_settings().home))


def _state_path() -> str:
    return os.path.join(_home(), STATE_FILE)


def _is_our_server(pid: int) -> bool:
    """``pid`` runs and is a Prefect server (not a process that reused the pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's process
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ")
    except OSError:  # no /proc (macOS): trust the pid
        return True
    return b"prefect" in cmd and b"server" in cmd


def local_server() -> dict[str, Any] | None:
    """The server ``blockbuster up`` started for this ``PREFECT_HOME`` (``pid``, ``url``,
    ``ui``, ``log``, ``started``) while it runs, else None. Cheap: a file and a pid."""
    try:
        with open(_state_path()) as f:
            state = json.load(f)
        pid = int(state["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state if _is_our_server(pid) else None


@contextlib.contextmanager
def use_local_server() -> Iterator[str | None]:
    """Point this thread's Prefect settings at the ``blockbuster up`` server while inside,
    when one runs and no ``PREFECT_API_URL`` is configured; yields its API URL or None.
    Runs inside send no flow-run heartbeats to it (nothing there watches for them).

    Examples
    --------
    >>> with use_local_server() as url:  # no server started: nothing changes
    ...     pass
    """
    import prefect.settings
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    if get_current_settings().api.url:
        yield None
        return
    state = local_server()
    if state is None:
        yield None
        return
    updates: dict[Any, Any] = {PREFECT_API_URL: state["url"]}
    # no flow-run heartbeats against it: they only serve automations that find crashed
    # runs, which this server has none of, and the flow's end waits for the heartbeat
    # thread's 1 s sleep (0.2-0.5 s of a 5 s fresh-process run, measured)
    heartbeat = getattr(prefect.settings, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY", None)
    if heartbeat is not None:
        updates[heartbeat] = None
    with temporary_settings(updates):
        yield state["url"]


def _free_port(preferred: int | None) -> int:
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise PrefectUnavailableError("no free TCP port on 127.0.0.1")  # pragma: no cover


def _healthy(url: str, timeout: float = 2.0) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/health", timeout=timeout) as r:
            return r.status == 200
    except Exception:
        return False


def start_local_server(port: int | None = None, timeout: float = 180.0) -> dict[str, Any]:
    """Start ``prefect server start`` on 127.0.0.1 in the background (its own session, so
    it outlives this process); return its state. One that is already up is returned as
    it is (``"already": True``).

    ``port``: default 4200 when free, else any free port. The server's output goes to
    ``$PREFECT_HOME/blockbuster-server.log``.

    Raises
    ------
    PrefectUnavailableError
        It did not answer within ``timeout`` seconds (it is stopped then; its log says why).
    """
    state = local_server()
    if state is not None:
        return {**state, "already": True}
    port = _free_port(port or DEFAULT_PORT)
    home = _home()
    os.makedirs(home, exist_ok=True)
    url = f"http://127.0.0.1:{port}/api"
    log_path = os.path.join(home, "blockbuster-server.log")
    env = {
        **os.environ,
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_API_URL": url,  # the UI's own requests, when not on port 4200
        "PREFECT_HOME": home,
    }
    env.pop("PREFECT_API_URL", None)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
            + ["--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # not stopped with the terminal that ran `up`
            close_fds=True,
        )
    deadline = time.monotonic() + timeout
    while not _healthy(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                _stop_pid(proc.pid)
            raise PrefectUnavailableError(
                f"the Prefect server did not start on 127.0.0.1:{port} within {timeout:g} s "
                f"(exit code {proc.poll()}); see {log_path}"
            )
        time.sleep(0.25)
    state = {
        "pid": proc.pid,
        "url": url,
        "ui": f"http://127.0.0.1:{port}",
        "log": log_path,
        "started": time.time(),
    }
    tmp = _state_path() + f".{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, _state_path())
    return state


def _stop_pid(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM the server's process group (it runs in its own session), SIGKILL after
    ``timeout`` seconds."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)  # our child: reap it
            except ChildProcessError:
                done = 0 if _alive(pid) else pid
            if done == pid or not _alive(pid):
                return
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def stop_local_server() -> dict[str, Any] | None:
    """Stop the server ``blockbuster up`` started (by its pid); return its state, or None
    when none was running."""
    state = local_server()
    with contextlib.suppress(OSError):
        os.remove(_state_path())
    if state is None:
        return None
    _stop_pid(int(state["pid"]))
    return state

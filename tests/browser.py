"""A headless Chromium driven over the Chrome DevTools Protocol (CDP), for tests and for
the screenshots of docs/ui.md.

Uses the Chromium of the operating system (``apt-get install chromium``; no browser is
downloaded) and ``websockets`` (a Prefect dependency): open a page, wait for what it
shows, evaluate JavaScript, take a screenshot.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["chromium_path", "Browser", "browser"]


def chromium_path() -> str | None:
    """The system's Chromium (or Chrome) executable, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One page of a headless Chromium, over CDP."""

    def __init__(self, ws, proc: subprocess.Popen):
        self._ws = ws
        self.proc = proc
        self._ids = itertools.count(1)

    def call(self, method: str, timeout: float = 60.0, **params: Any) -> dict:
        mid = next(self._ids)
        self._ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self._ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression[:80]}: {r['exceptionDetails']}")
        return r.get("result", {}).get("value")

    def wait_for(self, expression: str, ok: Callable[[Any], bool], timeout: float = 60.0) -> Any:
        """Evaluate ``expression`` until ``ok(value)``; the last value is in the error."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except RuntimeError:
                value = None  # the page is navigating
            if ok(value):
                return value
            time.sleep(0.25)
        raise AssertionError(f"timed out after {timeout} s waiting on {expression!r}: {value!r}")

    def images(self) -> list[dict]:
        """The page's <img> elements: src (first 40 characters), loaded, natural size."""
        return self.evaluate(
            "[...document.images].map(i => ({src: i.src.slice(0, 40), complete: i.complete,"
            " width: i.naturalWidth, height: i.naturalHeight, alt: i.alt}))"
        )

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def screenshot(self, path: str, full_page: bool = False) -> str:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        data = self.call("Page.captureScreenshot", **params)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path


@contextlib.contextmanager
def browser(width: int = 1400, height: int = 1000, timeout: float = 60.0) -> Iterator[Browser]:
    """A headless Chromium with one blank page; stopped (its process group) on exit."""
    from websockets.sync.client import connect

    exe = chromium_path()
    if exe is None:
        raise FileNotFoundError("no chromium executable (apt-get install chromium)")
    profile = tempfile.mkdtemp(prefix="blockbuster-chromium-")
    proc = subprocess.Popen(
        [
            exe,
            "--headless=new",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "about:blank",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        port_file = os.path.join(profile, "DevToolsActivePort")
        deadline = time.monotonic() + timeout
        while not os.path.exists(port_file) or os.path.getsize(port_file) == 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start (exit code {proc.poll()})")
            time.sleep(0.1)
        port = int(open(port_file).read().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page"]
        ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        try:
            b = Browser(ws, proc)
            b.call("Page.enable")
            b.call(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
            yield b
        finally:
            ws.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)

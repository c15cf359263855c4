"""Picklable tile functions that inject faults, for the reliability tests.

Each records its calls as files in ``calls_dir`` (so calls are counted across worker
processes and across driver processes). A tile is "marked" when it contains the value
``MARK``; faults fire on marked tiles only, switched on by flag files.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import numpy as np
import scipy.ndimage as ndi

MARK = 77


class FaultyLabel:
    def __init__(self, calls_dir: str, flag_dir: str | None = None, delay: float = 0.0):
        self.calls_dir = calls_dir
        self.flag_dir = flag_dir or calls_dir
        self.delay = delay

    def cache_token(self) -> str:  # same identity whatever the directories are
        return "tests.faults.FaultyLabel-v1"

    def _flag(self, name: str) -> str:
        return os.path.join(self.flag_dir, name)

    def __call__(self, tile):
        marked = bool((tile == MARK).any())
        with open(os.path.join(self.calls_dir, f"{os.getpid()}-{uuid.uuid4().hex}"), "w") as f:
            f.write("marked" if marked else "plain")
        if self.delay:
            time.sleep(self.delay)
        if marked and os.path.exists(self._flag("fail")):
            raise RuntimeError("injected failure on the marked tile")
        if marked and os.path.exists(self._flag("transient")):
            os.remove(self._flag("transient"))  # fails once, then works
            raise ConnectionError("injected transient failure")
        if marked and os.path.exists(self._flag("kill-worker")):
            os.remove(self._flag("kill-worker"))
            os.kill(os.getpid(), signal.SIGKILL)  # the worker process dies mid-task
        return ndi.label(tile > 0)[0]

    def n_calls(self) -> int:
        return len(os.listdir(self.calls_dir))


def marked_image(shape=(120, 120), seed=0, mark_at=(70, 70)):
    rng = np.random.default_rng(seed)
    img = (ndi.gaussian_filter(rng.random(shape), 2) > 0.5).astype(np.uint8)
    img[mark_at] = MARK
    return img


def kill_driver_once_staged(
    script: str | os.PathLike,
    env: dict[str, str],
    staging: str,
    n_tiles: int,
    *,
    timeout: float = 240.0,
    poll: float = 0.1,
) -> int:
    """Run ``python script`` in a session of its own, SIGKILL it and every process it
    started once ``staging`` (a folder or a URL) holds ``n_tiles`` finished tiles, and
    return how many finished tiles the staging holds after the kill."""
    import subprocess
    import sys

    import pytest

    from blockbuster.io import Staging

    proc = subprocess.Popen(
        [sys.executable, os.fspath(script)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            st = Staging(staging)
            if st.info() and len(st.finished_tiles()) >= n_tiles:
                break
            assert proc.poll() is None, "the driver ended before it could be killed"
            time.sleep(poll)
        else:
            pytest.fail(f"the driver did not stage {n_tiles} tiles in {timeout:.0f} s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and all it started
        proc.wait()
    time.sleep(0.5)
    return len(Staging(staging).finished_tiles())

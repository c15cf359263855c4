"""A real S3 protocol server on 127.0.0.1 for the tests: moto's server mode, run as its
own process (``moto_server``) on a free port, stopped by PID at the end.

The client side is configured the way a user would: the standard AWS environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_REGION``,
``AWS_EC2_METADATA_DISABLED``) with dummy credentials.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    """``with MotoServer() as srv:`` -> ``srv.endpoint``, ``srv.env`` (the AWS settings)."""

    def __init__(self, *, check_credentials: bool = False) -> None:
        self.proc: subprocess.Popen | None = None
        self.port = 0
        # moto checks request signatures against its IAM users only when told to (from
        # the first request on): then the dummy credentials of ``env`` are refused
        self.check_credentials = check_credentials

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self, timeout: float = 60.0) -> MotoServer:
        exe = shutil.which("moto_server") or os.path.join(
            os.path.dirname(sys.executable), "moto_server"
        )
        for _ in range(3):  # a free port can be taken between probe and bind
            self.port = _free_port()
            self.proc = subprocess.Popen(
                [exe, "-H", "127.0.0.1", "-p", str(self.port)],
                env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
                if self.check_credentials
                else None,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            t0 = time.monotonic()
            while time.monotonic() - t0 < timeout and self.proc.poll() is None:
                try:
                    urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=2).close()
                    return self
                except OSError:
                    time.sleep(0.1)
            self.stop()
        raise RuntimeError("moto_server did not start on 127.0.0.1")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def reset(self) -> None:
        """Forget every bucket (moto's reset API)."""
        req = urllib.request.Request(self.endpoint + "/moto-api/reset", method="POST")
        urllib.request.urlopen(req, timeout=10).close()

    def new_bucket(self) -> str:
        import urllib.request as ur

        import obstore  # noqa: F401

        name = "bb-" + uuid.uuid4().hex[:12]
        req = ur.Request(f"{self.endpoint}/{name}", method="PUT")
        ur.urlopen(req, timeout=10).close()
        return name

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

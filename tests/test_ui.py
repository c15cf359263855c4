"""The local UI, end to end, in a real headless browser.

`blockbuster up` starts a Prefect server on 127.0.0.1 (its own PREFECT_HOME, a free
port); a fresh Python process runs a job and reports to it (no temporary server);
`blockbuster serve` registers the deployments with it. Then the system's Chromium
(driven over CDP, tests/browser.py) opens the run's picture artifacts (the <img>
elements must have loaded, with a non-zero natural size) and the `segment`
deployment's run form (its titles, descriptions and segmenter choices must show).
`blockbuster down` stops the server; nothing is left running.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from browser import browser, chromium_path
from conftest import seed_prefect_home

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        chromium_path() is None,
        reason="no chromium (CI installs it: apt-get install chromium)",
    ),
]

JOB = """
import json, sys, time
t0 = time.perf_counter()
import scipy.ndimage as ndi
from blockbuster import tile_process

def label(tile):
    return ndi.label(tile > 0)[0]

_, s = tile_process(sys.argv[1], label, tile_shape=(64, 64), write_to=sys.argv[2],
                    return_summary=True)
print(json.dumps({"flow_run_id": s["flow_run_id"], "pictures": s.get("pictures"),
                  "seconds": time.perf_counter() - t0}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    code = "import sys; from blockbuster.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _cli_here(capsys, home: Path, *args: str) -> subprocess.CompletedProcess:
    """``blockbuster ARGS`` through ``cli.main`` in this process, with ``PREFECT_HOME``
    ``home``: for `info` and `down`, which read the state file `up` left in that home
    (the same code path without a Python start and its imports, ~3.5 CPU s each)."""
    import warnings

    from prefect.settings import PREFECT_HOME, temporary_settings

    from blockbuster.cli import main

    capsys.readouterr()
    with warnings.catch_warnings(), temporary_settings({PREFECT_HOME: str(home)}):
        code = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_local_ui_shows_the_pictures_and_the_deployment_form(
    tmp_path: Path, prefect_harness, capsys, monkeypatch
):
    import httpx

    home, data = tmp_path / "prefect-home", tmp_path / "data"
    seed_prefect_home(home)  # `up` finds its database migrated (a fresh one costs ~20 s)
    data.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BLOCKBUSTER_"))}
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
            ),
        }
    )
    for k in [k for k in os.environ if k.startswith("BLOCKBUSTER_")]:
        monkeypatch.delenv(k)  # for `info` and `down` in this process
    monkeypatch.setenv("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    port = _free_port()
    up = _cli("up", "--port", str(port), env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    state = json.loads((home / "blockbuster-server.json").read_text())
    serve = None
    try:
        assert f"http://127.0.0.1:{port}" in up.stdout
        info = _cli_here(capsys, home, "info")
        assert f"up at http://127.0.0.1:{port}" in info.stdout, info.stdout + info.stderr
        api = f"http://127.0.0.1:{port}/api"
        client = httpx.Client(base_url=api, timeout=30)

        # a fresh process runs a 16-tile job: it reports to the server `up` started
        rng = np.random.default_rng(3)
        img = (rng.random((256, 256)) > 0.6).astype(np.uint8)
        image = str(data / "image.zarr")
        zarr.create_array(store=image, data=img, chunks=(64, 64))
        out = str(data / "labels.zarr")
        job = subprocess.run(
            [sys.executable, "-c", JOB, image, out],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        res = json.loads(job.stdout.strip().splitlines()[-1])
        assert "Starting temporary server" not in job.stdout + job.stderr
        run = client.get(f"/flow_runs/{res['flow_run_id']}")
        assert run.status_code == 200 and run.json()["state"]["type"] == "COMPLETED"
        assert os.path.exists(res["pictures"]["files"]["preview"])
        # and sent it no flow-run heartbeat (nothing there watches for them, and the
        # flow's end waits for the heartbeat thread): its events are there, none of them
        # a heartbeat, once the run's own Completed event has arrived
        deadline = time.time() + 90
        while True:
            evs = client.post(
                "/events/filter",
                json={
                    "filter": {"any_resource": {"id": [f"prefect.flow-run.{res['flow_run_id']}"]}},
                    "limit": 50,
                },
            )
            names = {e["event"] for e in evs.json()["events"]} if evs.status_code == 200 else set()
            if "prefect.flow-run.Completed" in names or time.time() > deadline:
                break
            time.sleep(0.5)
        assert "prefect.flow-run.Completed" in names, names
        assert "prefect.flow-run.heartbeat" not in names, names

        # the deployments, registered with the same server by `blockbuster serve`
        serve_log = open(tmp_path / "serve.log", "wb")
        serve = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from blockbuster.cli import main; sys.exit(main())",
                "serve",
            ],
            env={**env, "BLOCKBUSTER_DATA_ROOTS": str(data)},
            stdout=serve_log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.time() + 240
        while True:
            r = client.post("/deployments/filter", json={})
            deps = {d["name"]: d for d in r.json()} if r.status_code == 200 else {}
            if "segment" in deps:
                break
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.time() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
        schema = deps["segment"]["parameter_openapi_schema"]
        arts = client.post(
            "/artifacts/filter",
            json={"artifacts": {"flow_run_id": {"any_": [res["flow_run_id"]]}}},
        ).json()
        by_key = {a["key"]: a for a in arts}
        assert {"blockbuster-preview", "blockbuster-tile-map"} <= set(by_key), list(by_key)

        with browser() as b:
            for key in ("blockbuster-preview", "blockbuster-tile-map"):
                b.open(f"http://127.0.0.1:{port}/artifacts/artifact/{by_key[key]['id']}")
                imgs = b.wait_for(
                    "[...document.images].map(i => ({src: i.src.slice(0, 22),"
                    " complete: i.complete, w: i.naturalWidth, h: i.naturalHeight}))",
                    lambda v: (
                        bool(v)
                        and any(
                            i["src"] == "data:image/png;base64," and i["complete"] and i["w"] > 0
                            for i in v
                        )
                    ),
                    timeout=90,
                )
                shown = [i for i in imgs if i["src"] == "data:image/png;base64,"]
                assert shown[0]["w"] > 0 and shown[0]["h"] > 0, imgs
            b.open(f"http://127.0.0.1:{port}/deployments/deployment/{deps['segment']['id']}/run")
            props = schema["properties"]
            fields = ("image", "segmenter", "output", "tiling")
            # each field's title and the first words of its description, as the form shows
            # them; the form renders field by field, so wait until all are there (a loaded
            # machine showed the titles before the last description)
            expected = [
                (props[n]["title"], " ".join(props[n]["description"].split()[:6])) for n in fields
            ]
            text = b.wait_for(
                "document.body ? document.body.innerText : ''",
                lambda t: (
                    bool(t)
                    and all(
                        title in t and words in " ".join(t.split()) for title, words in expected
                    )
                ),
                timeout=90,
            )
            for name in fields:
                assert props[name]["title"] in text, name
                first_words = " ".join(props[name]["description"].split()[:6])
                assert first_words in " ".join(text.split()), name
            options = b.evaluate(
                "[...document.querySelectorAll('select option')].map(o => o.text)"
            )
            assert {"threshold", "watershed"} <= set(options), options
    finally:
        if serve is not None:
            os.killpg(serve.pid, 15)
            serve.wait(timeout=60)
        try:
            down = _cli_here(capsys, home, "down")
        finally:
            if _alive(state["pid"]):  # pragma: no cover - down failed: do not leave it running
                os.killpg(state["pid"], 9)
    assert down.returncode == 0 and "stopped" in down.stdout, down.stdout + down.stderr
    assert not _alive(state["pid"])
    info = _cli_here(capsys, home, "info")
    assert "not running" in info.stdout, info.stdout

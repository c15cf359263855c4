"""A plain ``python script.py`` (no main guard, no server, no client) works and a
successful run prints neither tracebacks nor error logs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import os
    import httpx
    import numpy as np, scipy.ndimage as ndi
    import prefect  # Prefect's settings are read here
    from blockbuster import tile_process

    # the CSRF tokens a Prefect client asks for (blockbuster's one question to a
    # temporary server it started, client=blockbuster, is not counted)
    asked = []
    for cls in (httpx.Client, httpx.AsyncClient):
        def wrap(send):
            def counted(self, request, **kw):
                if request.url.path.endswith("/csrf-token") and (
                    request.url.params.get("client") != "blockbuster"
                ):
                    asked.append(request.url.path)
                return send(self, request, **kw)
            return counted
        cls.send = wrap(cls.send)
    # CSRF protection turned on after Prefect read its settings: they say off, the
    # temporary server (started later, from the environment) protects
    os.environ["PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED"] = "true"

    def label(tile):
        return ndi.label(tile > 0)[0]

    img = np.zeros((100, 100), np.uint8)
    img[10:90, 40:60] = 1
    lab = tile_process(img, label, tile_shape=(32, 32), compute=True, progress=True)
    print("labels:", np.unique(lab).size - 1)
    print("csrf tokens asked for:", len(asked))

    # what the run left on Prefect's temporary server (no UI, gone at exit)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from blockbuster.tasks import wait_for_closed

    wait_for_closed()  # the reporter thread's last calls, had it any
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(limit=1, sort="START_TIME_DESC")
        only = FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
        print("flow run:", client.read_flow(run.flow_id).name, run.state.type.value)
        print("artifacts:", len(client.read_artifacts(flow_run_filter=only)))
        print("task runs:", len(client.read_task_runs(flow_run_filter=only)))
""")


@pytest.mark.slow
def test_plain_script_runs_cleanly(tmp_path, prefect_home):
    """... and reports to Prefect's temporary server only what someone could use: the
    flow run, no artifacts (nobody can see them) and no task runs (its task run
    recorder is off). The server here protects with CSRF tokens, turned on after
    Prefect read its settings: blockbuster asks the server, not the settings, so the
    run's clients ask for tokens and it completes (it was refused, 403, when the
    settings decided)."""
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = prefect_home  # a fresh home, its database already migrated
    r = subprocess.run(
        [sys.executable, str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "labels: 1" in r.stdout
    assert "flow run: tile-process COMPLETED" in r.stdout, out
    assert "artifacts: 0" in r.stdout and "task runs: 0" in r.stdout, out
    assert "csrf tokens asked for: 0" not in r.stdout, out
    assert "Traceback" not in out, out
    assert "| ERROR" not in out and "CancelledError" not in out, out
    assert "segment" in r.stderr  # the tqdm bars

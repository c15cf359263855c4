"""A plain ``python script.py`` (no main guard, no server, no client) works and a
successful run prints neither tracebacks nor error logs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import numpy as np, scipy.ndimage as ndi
    from blockbuster import tile_process

    def label(tile):
        return ndi.label(tile > 0)[0]

    img = np.zeros((100, 100), np.uint8)
    img[10:90, 40:60] = 1
    lab = tile_process(img, label, tile_shape=(32, 32), compute=True, progress=True)
    print("labels:", np.unique(lab).size - 1)

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
    recorder is off)."""
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
    assert "Traceback" not in out, out
    assert "| ERROR" not in out and "CancelledError" not in out, out
    assert "segment" in r.stderr  # the tqdm bars

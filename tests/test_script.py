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
""")


@pytest.mark.slow
def test_plain_script_runs_cleanly(tmp_path, prefect_home):
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
    assert "Traceback" not in out, out
    assert "| ERROR" not in out and "CancelledError" not in out, out
    assert "segment" in r.stderr  # the tqdm bars

"""Faults injected with real processes: failing tiles, transient errors, a worker killed
mid-run, the driver killed with SIGKILL; resume recomputes only unfinished tiles."""

from __future__ import annotations

import os
import textwrap
import time

import numpy as np
import pytest
import scipy.ndimage as ndi
import zarr
from conftest import same_partition
from faults import FaultyLabel, kill_driver_once_staged, marked_image
from identity_fns import make_fn, n_calls

from blockbuster.api import tile_process
from blockbuster.errors import TileFunctionError
from blockbuster.io import Staging

pytestmark = pytest.mark.usefixtures("client")
TESTS = os.path.dirname(__file__)
TILE = (20, 20)


@pytest.fixture
def setup(tmp_path):
    img = marked_image()
    path = str(tmp_path / "img.zarr")
    zarr.create_array(store=path, shape=img.shape, chunks=TILE, dtype=img.dtype)[...] = img
    calls = tmp_path / "calls"
    calls.mkdir()
    flags = tmp_path / "flags"
    flags.mkdir()
    return img, path, str(calls), str(flags), str(tmp_path / "out.zarr"), str(tmp_path / "stg")


def oracle(img):
    return ndi.label(img > 0)[0]


def _wait_until_idle(client, timeout: float = 60) -> None:
    """Until no task runs or waits on the cluster and no call is being recorded."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not any(client.processing().values()):
            return
        time.sleep(0.05)
    pytest.fail("the cluster was still busy")


def test_failing_tile_fails_run_naming_it_then_resumes(setup, client):
    img, path, calls, flags, out, stg = setup
    open(os.path.join(flags, "fail"), "w").close()
    fn = FaultyLabel(calls, flags)
    with pytest.raises(TileFunctionError) as exc:
        tile_process(
            path, fn, tile_shape=TILE, write_to=out, staging=stg, retries=1, retry_delay=0.05
        )
    msg = str(exc.value)
    assert "tile 21" in msg and "origin (60, 60)" in msg and "injected failure" in msg
    assert exc.value.origin == (60, 60)
    assert not os.path.exists(out)  # no output that looks finished
    _wait_until_idle(client)  # batches of the failed run may still be running
    finished = len(Staging(stg).finished_tiles())
    assert 0 < finished < 36
    first = fn.n_calls()
    os.remove(os.path.join(flags, "fail"))
    lab = tile_process(path, fn, tile_shape=TILE, write_to=out, staging=stg, compute=True)
    assert fn.n_calls() - first == 36 - finished  # only unfinished tiles ran again
    assert same_partition(lab, oracle(img))
    assert zarr.open_array(out).attrs["blockbuster"]["complete"]


def test_transient_failure_succeeds_with_retries(setup):
    img, path, calls, flags, out, stg = setup
    open(os.path.join(flags, "transient"), "w").close()
    fn = FaultyLabel(calls, flags)
    lab = tile_process(path, fn, tile_shape=TILE, retries=2, retry_delay=0.05, compute=True)
    assert same_partition(lab, oracle(img))
    assert fn.n_calls() == 37  # one tile ran twice


def test_worker_killed_mid_run_is_survived(setup, client):
    img, path, calls, flags, out, stg = setup
    open(os.path.join(flags, "kill-worker"), "w").close()
    pids_before = set(client.run(os.getpid).values())
    fn = FaultyLabel(calls, flags)
    lab = tile_process(path, fn, tile_shape=TILE, compute=True)
    assert not os.path.exists(os.path.join(flags, "kill-worker"))  # the kill happened
    assert same_partition(lab, oracle(img))
    # the killed batch ran again and skipped the tiles it had staged: 36 calls plus the
    # one the kill interrupted (workers are single-threaded: no other call was cut off)
    assert fn.n_calls() == 37
    client.wait_for_workers(2, timeout=60)
    assert set(client.run(os.getpid).values()) != pids_before  # a worker was replaced


def test_changed_function_or_input_invalidates_staging(setup):
    """Each step changes one thing and keeps the staging, so a recomputation can only
    come from that change (the default identity: no cache_token)."""
    img, path, calls, flags, out, stg = setup
    kw = {"tile_shape": TILE, "write_to": out, "staging": stg, "keep_staging": True}
    kw["overwrite"] = True  # each step replaces the previous step's complete output
    lab = tile_process(path, make_fn("object", calls, 0), compute=True, **kw)
    assert n_calls(calls) == 36 and same_partition(lab, oracle(img))
    # only the numbering changed: the staging is reused, no call; labels exactly 1..N
    lab = tile_process(
        path, make_fn("object", calls, 0), sequential_labels=True, compute=True, **kw
    )
    assert n_calls(calls) == 36 and same_partition(lab, oracle(img))
    n = int(lab.max())
    assert np.array_equal(np.unique(lab), np.arange(n + 1))
    # an option that is part of the run (the tile grid): recomputed
    kw["tile_shape"] = (24, 24)  # 25 tiles
    lab = tile_process(path, make_fn("object", calls, 0), compute=True, **kw)
    assert n_calls(calls) == 36 + 25 and same_partition(lab, oracle(img))
    # the function changed (an attribute of the callable object): recomputed
    lab = tile_process(path, make_fn("object", calls, 1), compute=True, **kw)
    assert n_calls(calls) == 36 + 50
    assert same_partition(lab, ndi.label(img > 1)[0])
    # the input's pixels changed (written through zarr; no attribute touched): recomputed
    img2 = img.copy()
    img2[0:20, 0:20] = 3 - img2[0:20, 0:20]
    zarr.open_array(path, mode="r+")[0:20, 0:20] = img2[0:20, 0:20]
    lab = tile_process(path, make_fn("object", calls, 1), compute=True, **kw)
    assert n_calls(calls) == 36 + 75
    assert same_partition(lab, ndi.label(img2 > 1)[0])
    assert not same_partition(lab, ndi.label(img > 1)[0])


DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from faults import FaultyLabel
    from blockbuster import tile_process
    tile_process({path!r}, FaultyLabel({calls!r}, {flags!r}, delay=0.25), tile_shape={tile!r},
                 write_to={out!r}, staging={stg!r})
""")


@pytest.mark.slow
def test_driver_killed_with_sigkill_then_rerun(setup, tmp_path, prefect_api_url):
    # Prefect path: the driver reports to the session's server (no temporary server to
    # start in it); the temporary-server path is test_script's and test_cli's.
    img, path, calls, flags, out, stg = setup
    script = tmp_path / "driver.py"
    script.write_text(
        DRIVER.format(
            tests=TESTS, path=path, calls=calls, flags=flags, tile=TILE, out=out, stg=stg
        )
    )
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": prefect_api_url,
    }
    finished = kill_driver_once_staged(script, env, stg, 10, timeout=180)
    assert 10 <= finished < 36
    assert not os.path.exists(out) or not zarr.open_array(out).attrs.get("blockbuster", {}).get(
        "complete"
    )
    before = FaultyLabel(calls, flags).n_calls()
    fn = FaultyLabel(calls, flags)
    lab = tile_process(path, fn, tile_shape=TILE, write_to=out, staging=stg, compute=True)
    assert fn.n_calls() - before == 36 - finished
    assert same_partition(lab, oracle(img))

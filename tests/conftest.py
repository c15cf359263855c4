"""Shared fixtures: a real LocalCluster of worker processes and Prefect's test harness.

Both are session-scoped: starting them costs seconds, and production runs them warm too.
"""

from __future__ import annotations

import contextlib
import os
import uuid

import numpy as np
import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# pytest-xdist runs the suite in 2 worker processes (`-n 2` in pyproject's addopts); each
# starts its own test harness and LocalCluster (the session fixtures below) and gets a
# PREFECT_HOME of its own, set here before anything imports Prefect.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER:
    _base = os.environ.get("PREFECT_HOME") or os.path.join(os.path.expanduser("~"), ".prefect")
    os.environ["PREFECT_HOME"] = os.path.join(_base, f"xdist-{_WORKER}")
    os.makedirs(os.environ["PREFECT_HOME"], exist_ok=True)
    # One OpenMP thread per test process (as Dask's nannies give each worker): two xdist
    # workers of 2 OpenMP threads each on 2 cores spin-wait for each other (PyTorch's
    # Cellpose tests took 2-3x the CPU seconds, docs/testing.md). Subprocesses inherit it.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


# The order the xdist workers take the test files in (`--dist loadfile`): the longest
# first, then the rest as collected. xdist's default orders files by their number of
# tests, which left one-test files of 30-50 s (test_ui, test_script) and
# test_cellpose_pipeline near the end, one worker running them while the other idled.
# Seconds are CPU seconds of each file alone, its harness and cluster start left out
# (docs/testing.md); an order, not a contract: a file missing here only runs later.
LONGEST_FIRST = [
    "test_deployments.py",  # 79: a server, `blockbuster serve`, a process per served run
    "test_cli.py",  # 68: subprocesses, two of them on Prefect's temporary server
    "test_objstore.py",  # 53: moto's S3 server, separate Dask worker processes
    "test_cellpose_pipeline.py",  # 52: Cellpose on the cluster
    "test_resume_identity.py",  # 49: four drivers killed mid-run
    "test_cellpose_plugin.py",  # 42
    "test_ui.py",  # 36: `blockbuster up`, a job, `serve`, Chromium
    "test_default_call.py",  # 28
    "test_safety.py",  # 24
    "test_core_merge.py",  # 21: the merge property, in-process
    "test_script.py",  # 19: a plain script on Prefect's temporary server
    "test_pipeline.py",  # 16
    "test_reliability.py",
    "test_code_checks.py",  # mypy
]


def pytest_configure(config):
    # in the xdist controller: keep the collection order below (xdist >= 3.6 reorders by
    # the number of tests per file unless told not to)
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


_MIGRATED_DB: list[str] = []  # the session's migrated Prefect database (see prefect_home)


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """Prefect's test harness: a temporary API server on a fresh database. Right after it
    starts, a copy of its freshly migrated database is kept for :func:`prefect_home`.

    Under xdist the workers' harnesses start one after the other (a lock file of this
    run): the first migrates its database and leaves a copy for the run; the next starts
    on a copy of it, with nothing left to migrate (~7-10 CPU s less per worker)."""
    import fcntl
    from unittest import mock

    import prefect.testing.utilities as harness_module
    from prefect.settings import get_current_settings

    shared = _run_shared_dir(tmp_path_factory)
    with contextlib.ExitStack() as stack:
        if shared is not None:
            lock = stack.enter_context(open(shared / "harness.lock", "w"))
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the harness is up (below)
            # the harness's database file: `mkdtemp()/prefect-test.db` (Prefect 3.9-3.x)
            if (shared / "prefect.db").exists() and hasattr(harness_module, "mkdtemp"):
                start = tmp_path_factory.mktemp("prefect-harness")
                _sqlite_copy(str(shared / "prefect.db"), str(start / "prefect-test.db"))
                stack.enter_context(
                    mock.patch.object(harness_module, "mkdtemp", lambda: str(start))
                )
        with harness_module.prefect_test_harness(server_startup_timeout=120):
            url = str(get_current_settings().server.database.connection_url.get_secret_value())
            template = tmp_path_factory.mktemp("prefect-db") / "prefect.db"
            _sqlite_copy(url.split(":///", 1)[1], str(template))
            _MIGRATED_DB[:] = [str(template)]
            if shared is not None and not (shared / "prefect.db").exists():
                _sqlite_copy(str(template), str(shared / "prefect.tmp"))
                os.replace(shared / "prefect.tmp", shared / "prefect.db")
            stack.close()  # the lock released: the next worker's harness may start
            yield


def _run_shared_dir(tmp_path_factory):
    """A folder the xdist workers of this run share (None outside xdist)."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not _WORKER or not run:
        return None
    d = tmp_path_factory.getbasetemp().parent / f"prefect-{run}"
    d.mkdir(exist_ok=True)
    return d


def _sqlite_copy(src: str, dst: str) -> None:
    """A consistent copy of a SQLite database another process has open."""
    import sqlite3

    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    a.close()
    b.close()


def seed_prefect_home(home) -> str:
    """Make ``home`` a PREFECT_HOME holding a copy of the session's migrated database
    (the ``prefect_harness`` fixture must be active): a first start on an empty home
    migrates its database (20-23 s on 2 cores) before a server answers; with the copy it
    finds nothing to migrate."""
    os.makedirs(home, exist_ok=True)
    assert _MIGRATED_DB, "seed_prefect_home needs the prefect_harness fixture"
    _sqlite_copy(_MIGRATED_DB[0], os.path.join(home, "prefect.db"))
    return str(home)


@pytest.fixture(scope="session")
def prefect_api_url(prefect_harness) -> str:
    """The API URL of the session's Prefect server: the harness's, on 127.0.0.1, started
    once per session (per xdist worker) and stopped by its pid when the session ends.

    A subprocess given ``PREFECT_API_URL`` set to it reports there and starts no
    temporary server of its own (~10 CPU s each on 2 cores: the server's imports, its
    database, uvicorn). Tests of the default path users get (no API configured: a
    temporary server per process) must not use it: test_script, test_cli's
    ``test_run_segments_a_small_image`` and ``test_demo_prints_its_summary`` and
    ``test_a_temporary_server_that_does_not_start_in_time_is_stopped`` stay on it."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url and url.startswith("http://127.0.0.1:"), url
    return url


@pytest.fixture
def prefect_home(tmp_path, prefect_harness) -> str:
    """A fresh PREFECT_HOME for a subprocess that runs Prefect (see seed_prefect_home)."""
    return seed_prefect_home(tmp_path / "prefect-home")


@pytest.fixture(scope="session")
def cluster_client(prefect_harness):
    """A client to 2 single-threaded worker processes, the default client of the session."""
    import logging

    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    )
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(autouse=True)
def _shared_cluster_closed_after_the_test():
    """A test that started the process's shared local cluster (a call with no client, in a
    worker process that had no session client yet) closes it: the next test finds the
    process as the test before it found it, whatever order the files run in
    (test_default_call and the doctests of blockbuster/cluster/_shared.py check that no
    such cluster is there), and its 3 processes do not idle through the session."""
    from blockbuster.cluster import close_local_cluster, shared_cluster_info

    before = shared_cluster_info()
    yield
    if before is None and shared_cluster_info() is not None:
        close_local_cluster()


@pytest.fixture
def client(cluster_client):
    return cluster_client


@pytest.fixture
def nvml(monkeypatch):
    """NVML's answers replaced by a list the test fills (hardware CI has no GPU, and a
    test must not depend on whether the host has one); CUDA_VISIBLE_DEVICES unset."""
    from blockbuster.cluster import _gpus

    answers: list = []
    monkeypatch.setattr(_gpus, "nvml_devices", lambda: list(answers))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return answers


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label images describe the same objects (ids may differ)."""
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    if a.shape != b.shape:
        return False
    if not np.array_equal(a == 0, b == 0):
        return False
    fg = a != 0
    pairs = np.unique(np.stack([a[fg], b[fg]]), axis=1)
    return pairs.shape[1] == np.unique(a[fg]).size == np.unique(b[fg]).size


class CountingLabel:
    """A picklable connected-components tile function that records each call as a file,
    so calls can be counted across worker processes."""

    def __init__(self, calls_dir: str, connectivity: int = 1, threshold: float = 0):
        self.calls_dir = calls_dir
        self.connectivity = connectivity
        self.threshold = threshold

    def __call__(self, tile):
        import scipy.ndimage as ndi

        with open(os.path.join(self.calls_dir, f"{os.getpid()}-{uuid.uuid4().hex}"), "w") as f:
            f.write(str(tile.shape))
        st = ndi.generate_binary_structure(tile.ndim, self.connectivity)
        return ndi.label(tile > self.threshold, structure=st)[0]

    def calls(self) -> list[str]:
        out = []
        for name in os.listdir(self.calls_dir):
            with open(os.path.join(self.calls_dir, name)) as f:
                out.append(f.read())
        return out

    def cache_token(self):
        return f"CountingLabel-{self.connectivity}-{self.threshold}"


@pytest.fixture
def counting_label(tmp_path):
    d = tmp_path / "calls"
    d.mkdir()
    return lambda **kw: CountingLabel(str(d), **kw)


def blobs(shape, density=0.5, sigma=1.5, seed=0):
    """A random binary image of blobs of varied sizes (deterministic for a seed)."""
    import scipy.ndimage as ndi

    rng = np.random.default_rng(seed)
    img = ndi.gaussian_filter(rng.random(shape), sigma)
    return (img > np.quantile(img, 1 - density)).astype(np.uint8)


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 (its own process), with the standard AWS
    environment pointing at it in this process (and in the session's Dask workers, when
    they run: see ``s3_bucket``)."""
    pytest.importorskip("moto")
    pytest.importorskip("obstore")
    from s3server import MotoServer

    with MotoServer() as srv, pytest.MonkeyPatch.context() as mp:
        for k, v in srv.env.items():
            mp.setenv(k, v)
        yield srv


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh, empty bucket; returns its ``s3://`` URL. Workers of the session's
    cluster (when the test uses it) get the same AWS environment, as workers started
    with it would have."""
    if "cluster_client" in request.fixturenames or "client" in request.fixturenames:
        client = request.getfixturevalue("cluster_client")
        env = s3_server.env
        client.run(lambda: os.environ.update(env))
    return f"s3://{s3_server.new_bucket()}"

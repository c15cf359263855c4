"""The command line, through subprocesses: help, exit codes, one-line errors, and real runs.

Exit codes: 0 ok, 1 the work failed, 2 bad usage or input.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.ndimage as ndi
import zarr
from _trees import assert_refused, tree_state
from conftest import same_partition, seed_prefect_home

from blockbuster.synthetic import write_synthetic_zarr

THRESHOLD = 0.3 * 65535
COMMANDS = ["run", "merge", "estimate-empty", "info", "demo", "serve"]


def _cmd() -> list[str]:
    exe = shutil.which(
        "blockbuster",
        path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    )
    return [exe] if exe else [sys.executable, "-m", "blockbuster.cli"]


def cli(
    *args: str, env: dict | None = None, timeout: float = 300, cwd: str | None = None
) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKBUSTER_")}
    base.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    base.update(env or {})
    return subprocess.run(
        _cmd() + list(args), env=base, capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


def assert_one_line_error(p: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("blockbuster"), lines[0]
    assert "error:" in lines[0] and "Traceback" not in p.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("cli")
    return write_synthetic_zarr(str(d / "nuclei.zarr"), (96, 96), (32, 32), seed=3)


@pytest.fixture(scope="module")
def prefect_env(tmp_path_factory, prefect_harness) -> dict:
    """The environment of a command that runs a flow: a PREFECT_HOME of this module whose
    database is already migrated (a fresh one costs its first run ~20 s)."""
    return {"PREFECT_HOME": seed_prefect_home(tmp_path_factory.mktemp("cli-prefect-home"))}


@pytest.fixture
def main(monkeypatch, capsys):
    """``blockbuster.cli.main`` in this process (for the many quick error cases): returns
    (exit code, stdout, stderr)."""
    from blockbuster.cli import _main as cli_module

    for k in [k for k in os.environ if k.startswith("BLOCKBUSTER_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")

    def run(*args: str):
        import warnings

        with warnings.catch_warnings():
            try:
                code = cli_module.main(list(args))
            except SystemExit as exc:  # argparse: --help, usage errors
                code = exc.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


def assert_one_line(code_out_err, code: int, *needles: str) -> None:
    got, out, err = code_out_err
    p = subprocess.CompletedProcess([], got, out, err)
    assert_one_line_error(p, code, *needles)


def test_help(main):
    p = cli("--help")
    assert p.returncode == 0 and p.stderr == ""
    for c in COMMANDS:
        assert c in p.stdout
    assert "Exit codes" in p.stdout
    # the same through cli.main in this process (no second Python start)
    code, out, err = main("run", "--help")
    assert code == 0 and out.startswith("usage: blockbuster run") and err == ""
    assert "--segmenter" in out and "--write-to" in out
    for c in COMMANDS:
        code, out, _ = main(c, "--help")
        assert code == 0 and out.startswith(f"usage: blockbuster {c}"), (c, out)
    code, out, _ = main("--version")
    assert code == 0 and out.startswith("blockbuster ")


def test_bad_path_is_one_line_and_exit_code_2(tmp_path, main):
    missing = str(tmp_path / "no-such-image.zarr")
    # through cli.main in this process: a real process's one-line refusal of `run` is
    # test_cli_refuses_and_keeps_every_byte's first case
    assert_one_line(
        main("run", missing, "--segmenter", "threshold", "--write-to", str(tmp_path / "o.zarr")),
        2,
        "no-such-image.zarr",
        "does not exist",
    )
    assert not (tmp_path / "o.zarr").exists()
    assert_one_line(main("info", missing), 2, "does not exist")
    assert_one_line(main("estimate-empty", missing, "-t", "8,8"), 2, "does not exist")
    assert_one_line(main("merge", missing, "-w", str(tmp_path / "m.zarr")), 2, "do not exist")


def test_usage_and_input_errors_are_one_line_and_exit_code_2(image, tmp_path, main):
    # every byte next to the image (the module's folder) and in tmp_path, before
    before = (tree_state(os.path.dirname(image)), tree_state(tmp_path))
    assert_one_line_error(cli(), 2, "required")
    assert_one_line(main("frobnicate"), 2, "invalid choice")
    assert_one_line(main("run", image), 2, "--segmenter")
    assert_one_line(main("run", image, "-s", "nope"), 2, "no segmenter named 'nope'", "Available:")
    assert_one_line(
        main("run", image, "-s", "threshold", "-o", "min_sise=3"), 2, "did you mean 'min_size'"
    )
    assert_one_line(main("run", image, "-s", "threshold", "-o", "oops"), 2, "KEY=VALUE")
    assert_one_line(main("run", image, "-s", "threshold", "-t", "big"), 2, "tile shape")
    assert_one_line(main("run", image, "-s", "threshold", "-t", "8,8,8"), 2, "tile_shape")
    assert_one_line(
        main("run", image, "-s", "threshold", "-w", image), 2, "would replace the input"
    )
    assert_one_line(
        main("run", image, "-s", "threshold", "--merge", "overlap"), 2, "needs overlap > 0"
    )
    assert_one_line(main("estimate-empty", image, "-t", "auto"), 2, "explicit --tile-shape")
    assert_one_line(main("serve", "--limit", "0"), 2, "--limit")
    # serve refuses to start without data roots
    assert_one_line(main("serve"), 2, "BLOCKBUSTER_DATA_ROOTS is not set")
    # no refusal wrote, changed or removed anything, the input included
    assert (tree_state(os.path.dirname(image)), tree_state(tmp_path)) == before


def test_a_failure_of_the_work_is_one_line_and_exit_code_1(tmp_path):
    (tmp_path / "incoming").mkdir()
    closed = f"http://127.0.0.1:{_closed_port()}/api"  # no Prefect server there
    p = cli(
        "serve",
        env={
            "BLOCKBUSTER_DATA_ROOTS": str(tmp_path),
            "BLOCKBUSTER_WATCH_FOLDER": str(tmp_path / "incoming"),
            "PREFECT_API_URL": closed,
        },
    )
    assert_one_line_error(p, 1, "cannot reach the Prefect API", closed, "--debug")


def _servers_using(home: str) -> list:
    """The live processes started with ``PREFECT_HOME=home`` other than us (the
    temporary API server a run may have left behind)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid != os.getpid() and proc.environ().get("PREFECT_HOME") == home:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


@pytest.mark.skipif("PREFECT_API_URL" in os.environ, reason="needs ephemeral mode")
def test_a_temporary_server_that_does_not_start_in_time_is_stopped(image, tmp_path):
    # A first start on a fresh PREFECT_HOME migrates its database (~20 s here), far over
    # a 1 s timeout. Prefect leaves a server that missed its timeout running, holding
    # our stdout open: without blockbuster stopping it, this call would hang for
    # `timeout` seconds although the command has exited (CI once waited 300 s).
    home = str(tmp_path / "prefect-home")
    env = {"PREFECT_HOME": home, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "1"}
    try:
        p = cli(
            "run",
            image,
            "-s",
            "threshold",
            "-o",
            f"threshold={THRESHOLD}",
            "-t",
            "32,32",
            "-w",
            str(tmp_path / "labels.zarr"),
            env=env,
            timeout=120,
        )
        assert_one_line_error(
            p, 1, "did not start within 1 s", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
        )
        assert not _servers_using(home)
        # nothing that could pass for a finished output
        assert not (tmp_path / "labels.zarr").exists()
    finally:
        for proc in _servers_using(home):
            proc.kill()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_segments_a_small_image(image, tmp_path, prefect_env, main):
    out = str(tmp_path / "labels.zarr")
    p = cli(
        "run",
        image,
        "--segmenter",
        "threshold",
        "--option",
        f"threshold={THRESHOLD}",
        "--tile-shape",
        "32,32",
        "--write-to",
        out,
        env=prefect_env,
    )
    assert p.returncode == 0, p.stderr
    noise = [
        ln
        for ln in p.stderr.splitlines()
        if any(w in ln for w in ("Traceback", "ERROR", "Error", "| INFO"))
    ]
    assert not noise, p.stderr  # no tracebacks, error logs or Prefect chatter
    assert p.stdout.startswith("segmented ") and out in p.stdout
    img = zarr.open_array(image, mode="r")[...]
    lab = zarr.open_array(out, mode="r")
    assert lab.attrs["blockbuster"]["complete"] is True and lab.chunks == (32, 32)
    assert same_partition(lab[...], ndi.label(img > THRESHOLD)[0])
    # again: the output is complete, nothing is redone (decided before any flow or
    # cluster starts: the same code path in this process, without a Python start)
    stamp = os.stat(os.path.join(out, "zarr.json")).st_mtime_ns
    code, stdout, err = main(
        "run", image, "-s", "threshold", "-o", f"threshold={THRESHOLD}", "-t", "32,32",
        "-w", out, "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["status"] == "already-segmented"
    assert os.stat(os.path.join(out, "zarr.json")).st_mtime_ns == stamp


def test_info_estimate_empty_and_serve_check(image, tmp_path, main, monkeypatch):
    code, out, err = main("info")
    assert code == 0, err
    assert "threshold" in out and "watershed" in out and "CPUs" in out
    code, out, err = main("info", image, "--segmenter", "watershed", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["shape"] == [96, 96] and info["kind"] == "zarr"
    assert len(info["auto_tile_shape"]) == 2 and info["n_tiles"] >= 1
    code, out, err = main(
        "estimate-empty", image, "--tile-shape", "32,32", "--threshold", str(THRESHOLD), "--json"
    )
    assert code == 0, err
    r = json.loads(out)
    img = zarr.open_array(image, mode="r")[...]
    maxima = img.reshape(3, 32, 3, 32).max(axis=(1, 3))
    assert r["n_tiles"] == 9 and r["n_empty"] == int((maxima <= THRESHOLD).sum())
    assert np.array_equal(np.array(r["empty"]), maxima <= THRESHOLD)
    code, out, err = main("estimate-empty", image, "-t", "32,32")
    assert code == 0 and "threshold" in out and "--skip-empty" in out, err
    # `serve --check` reads its settings from the environment (in this process too)
    monkeypatch.setenv("BLOCKBUSTER_DATA_ROOTS", str(tmp_path))
    monkeypatch.setenv("BLOCKBUSTER_WATCH_FOLDER", str(tmp_path / "incoming"))
    monkeypatch.setenv("BLOCKBUSTER_WATCH_CRON", "0 2 * * *")
    code, out, err = main("serve", "--check")
    assert code == 0, err
    assert "cron '0 2 * * *'" in out and "segment/segment" in out
    assert "does not exist (yet)" in out
    monkeypatch.setenv("BLOCKBUSTER_WATCH_CRON", "nightly")
    assert_one_line(main("serve", "--check"), 2, "BLOCKBUSTER_WATCH_CRON")


def test_demo_prints_its_summary(tmp_path, prefect_env):
    p = cli(
        "demo",
        *("--workdir", str(tmp_path), "--size", "128", "--tile", "64", "--no-progress"),
        env=prefect_env,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("blockbuster demo") and "F1" in p.stdout, p.stdout
    assert zarr.open_array(str(tmp_path / "labels.zarr"), mode="r").shape == (128, 128)


def _refused_by_cli(*args: str, cwd: str | None = None) -> None:
    p = cli(*args, cwd=cwd, timeout=120)
    _refusal(p.returncode, p.stderr, args)


def _refused_by_main(main, *args: str) -> None:
    code, _, err = main(*args)
    _refusal(code, err, args)


def _refusal(code: int, stderr: str, args) -> None:
    if code == 0:
        raise AssertionError(f"accepted: {args}")
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    raise _CliRefusal(code, lines[0])


class _CliRefusal(Exception):
    pass


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-places")
    img = write_synthetic_zarr(str(d / "img.zarr"), (64, 64), (32, 32), seed=5)
    (d / "precious").mkdir()
    (d / "precious" / "notes.txt").write_text("a year of work")
    (d / "file.txt").write_text("keep")
    hand = zarr.open_array(
        str(d / "hand.zarr"), mode="w", shape=(64, 64), chunks=(32, 32), dtype="u4"
    )
    hand[...] = 3
    return d, img


_REFUSALS = [
    (("run", "{img}", "-s", "threshold", "-w", "{d}/precious"), "never replaces it"),
    (("run", "{img}", "-s", "threshold", "-w", "{d}/file.txt", "--overwrite"), "a file"),
    (
        ("run", "{img}", "-s", "threshold", "-w", "{d}/hand.zarr", "--overwrite"),
        "did not write",
    ),
    (("run", "{img}", "-s", "threshold", "-w", "{d}"), "contains the input"),
    (("run", "{img}", "-s", "threshold", "-w", "ftp://bucket/labels.zarr"), "is a URL"),
    (("run", "{img}", "-s", "threshold", "-w", "{d}/shared::memory"), "'::'"),
    (("run", "{img}", "-s", "threshold", "-t", "64,64", "--overlap", "100"), "larger than"),
    (("merge", "{img}", "-w", "{img}"), "is the input"),
    (("merge", "{img}", "-w", "{d}/precious", "--overwrite"), "never replaces it"),
    (("merge", "{img}", "-w", "ftp://bucket/m.zarr"), "is a URL"),
]
# the first refusal of each command runs in a real `blockbuster` process (its exit code
# and its whole stderr as a user sees them); the others through ``cli.main`` in this
# process: the same code path without a Python start and its imports (~3.5 s each)
_IN_A_PROCESS = {_REFUSALS[0][0], _REFUSALS[7][0]}


@pytest.mark.parametrize("args, needle", _REFUSALS)
def test_cli_refuses_and_keeps_every_byte(places, args, needle, main, monkeypatch):
    d, img = places
    argv = [a.format(d=d, img=img) for a in args]
    monkeypatch.chdir(d)
    if args in _IN_A_PROCESS:
        call = lambda: _refused_by_cli(*argv, cwd=str(d))  # noqa: E731
    else:
        call = lambda: _refused_by_main(main, *argv)  # noqa: E731
    e = assert_refused(
        call,
        _CliRefusal,
        d,
        match=re.escape(needle),
        case="cli: " + " ".join(args),
    )
    assert e.args[0] == 2, e.args  # bad usage or input

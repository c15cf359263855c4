"""watch-acquisitions: finding acquisitions, deciding what is finished and what is not
segmented yet, and the output lock that keeps an acquisition from being segmented twice.

All on real files, real zarr stores and real processes; no Prefect server is needed here
(tests/test_deployments.py runs the flow end to end against one).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from blockbuster.deploy import (
    MAX_ATTEMPTS,
    OutputLock,
    Settings,
    acquisition_finished,
    find_acquisitions,
    lock_path,
    output_state,
    prepare_segment,
    run_segment,
    scan_folder,
)
from blockbuster.deploy._paths import _record_failure
from blockbuster.io import OutputTarget, open_path

HOUR = 3600.0


def _store(path: Path, shape=(16, 16)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = zarr.create_array(str(path), shape=shape, chunks=(8, 8), dtype="u2")
    arr[...] = np.arange(np.prod(shape), dtype="u2").reshape(shape)
    return str(path)


def _tiff(path: Path) -> str:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(str(path), np.ones((16, 16), "u2"))
    return str(path)


def _age(path: Path | str, seconds: float = HOUR) -> None:
    """Make everything in ``path`` look last modified ``seconds`` ago."""
    t = time.time() - seconds
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            os.utime(os.path.join(root, n), (t, t))
    os.utime(path, (t, t))


def _complete_output(path: Path, shape=(16, 16), image: str | None = None) -> None:
    """A complete output; with ``image``, its record names that input (as a run's does)."""
    out = OutputTarget(str(path), overwrite=True)
    out.create(shape, "uint32", (8, 8), {"run_key": "earlier"})
    ident = open_path(image).identity() if image else None
    out.mark_complete({"run_key": "earlier", **({"input": ident} if ident else {})})


def test_find_acquisitions(tmp_path):
    w = tmp_path / "incoming"
    expected = [
        _store(w / "a.zarr"),
        _tiff(w / "b.ome.tif"),
        _store(w / "day1" / "c.zarr"),
        _store(w / "day1" / "deeper" / "run7"),  # a store without the .zarr suffix
        _tiff(w / "day1" / "d.tiff"),
    ]
    _store(w / ".hidden.zarr")  # hidden: staging, locks
    _complete_output(w / "a.zarr.labels.zarr")  # our own output
    (w / "a.zarr.done").write_text("")  # a completion marker
    (w / "notes.txt").write_text("not an image")
    (w / "day1" / "deeper" / "run7" / "0").mkdir()  # inside a store: not entered
    _store(w / "day1" / "deeper" / "run7" / "0" / "inner.zarr")
    os.symlink(w / "day1", w / "link-to-day1")  # folder links are not followed
    _store(tmp_path / "out" / "x.zarr")
    (w / "out").symlink_to(tmp_path / "out")
    assert find_acquisitions(str(w)) == sorted(expected)
    _store(w / "labels-out" / "y.zarr")
    assert str(w / "labels-out" / "y.zarr") not in find_acquisitions(
        str(w), skip=(str(w / "labels-out"),)
    )


def test_finished_by_settle_time_or_completion_marker(tmp_path):
    a = Path(_store(tmp_path / "a.zarr"))
    done, why = acquisition_finished(str(a), settle_seconds=60)
    assert not done and "changed" in why
    _age(a)
    done, why = acquisition_finished(str(a), settle_seconds=60)
    assert done and "unchanged for" in why
    # blockbuster's own writes (labels of an OME-Zarr, hidden lock/staging) do not count
    (a / "labels").mkdir()
    (a / "labels" / "zarr.json").write_text("{}")
    (a / ".lock").write_text("")
    assert acquisition_finished(str(a), settle_seconds=60)[0]
    # a new chunk does
    zarr.open_array(str(a), mode="r+")[0, 0] = 7
    assert not acquisition_finished(str(a), settle_seconds=60)[0]
    # a completion marker finishes it at once, next to it or inside it
    (tmp_path / "a.zarr.done").write_text("")
    assert acquisition_finished(str(a), settle_seconds=60) == (
        True,
        "completion marker a.zarr.done",
    )
    os.remove(tmp_path / "a.zarr.done")
    (a / ".done").write_text("")
    assert acquisition_finished(str(a), settle_seconds=60)[0]
    assert acquisition_finished(str(a), settle_seconds=60, marker=".complete")[0] is False
    # an empty folder is not finished, however old
    e = tmp_path / "e.zarr"
    e.mkdir()
    _age(e)
    assert acquisition_finished(str(e), settle_seconds=60) == (False, "still empty")
    t = _tiff(tmp_path / "t.tif")
    assert not acquisition_finished(t, settle_seconds=60)[0]
    _age(t)
    assert acquisition_finished(t, settle_seconds=60)[0]


def _hold_lock(output: str) -> subprocess.Popen:
    """Another process that takes the output's lock and keeps it until killed."""
    code = (
        "import sys, time\n"
        "from blockbuster.deploy import OutputLock\n"
        "assert OutputLock(sys.argv[1]).acquire({'flow_run_id': 'other-run'})\n"
        "print('locked', flush=True)\n"
        "time.sleep(600)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code, output], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_scan_decides_what_to_segment(tmp_path):
    w = tmp_path / "incoming"
    fin = _store(w / "fin.zarr")
    wip = _store(w / "wip.zarr")
    done = _store(w / "done.zarr")
    half = _store(w / "half.zarr")
    OutputTarget(str(w / "half.zarr.labels.zarr")).create((16, 16), "uint32", (8, 8), {})
    foreign = _store(w / "foreign.zarr")
    (w / "foreign.zarr.labels.zarr").mkdir()
    (w / "foreign.zarr.labels.zarr" / "mine.txt").write_text("keep")
    broken = w / "broken.zarr"
    broken.mkdir()
    (broken / "zarr.json").write_text("not json")
    held = _store(w / "held.zarr")
    failing = _store(w / "failing.zarr")
    for _ in range(MAX_ATTEMPTS):
        _record_failure(str(w / "failing.zarr.labels.zarr"), "TileFunctionError: boom")
    for p in (fin, done, half, foreign, broken, held, failing):
        _age(p)
    _complete_output(w / "done.zarr.labels.zarr", image=done)  # made from done as it is
    marked = _store(w / "marked.zarr")
    (w / "marked.zarr.done").write_text("")
    holder = _hold_lock(str(w / "held.zarr.labels.zarr"))
    try:
        decisions = scan_folder(
            str(w), settle_seconds=60, marker=".done", output_dir=None, label_name="segmentation"
        )
    finally:
        holder.kill()
        holder.wait()
    got = {Path(d.acquisition).name: d.status for d in decisions}
    assert got == {
        "fin.zarr": "segment",
        "wip.zarr": "unfinished",
        "done.zarr": "already-segmented",
        "half.zarr": "segment",
        "foreign.zarr": "output-exists",
        "broken.zarr": "unreadable",
        "held.zarr": "busy",
        "failing.zarr": "gave-up",
        "marked.zarr": "segment",
    }
    by = {Path(d.acquisition).name: d for d in decisions}
    assert by["fin.zarr"].output == str(w / "fin.zarr.labels.zarr")
    assert "other-run" in by["held.zarr"].detail
    assert "blockbuster-failed" in by["failing.zarr"].detail
    del wip, marked
    # with an output folder, outputs mirror the sub-folders and the folder is not scanned
    out = w / "labels"
    d2 = scan_folder(
        str(w), settle_seconds=60, marker=".done", output_dir=str(out), label_name="segmentation"
    )
    assert {d.output for d in d2 if d.status == "segment"} >= {str(out / "fin.zarr.labels.zarr")}


def test_ome_zarr_labels_go_inside_the_image(tmp_path):
    img = tmp_path / "in" / "cells.ome.zarr"
    g = zarr.open_group(str(img), mode="w")
    g.create_array("0", shape=(16, 16), chunks=(8, 8), dtype="u2")[...] = 1
    g.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
                "datasets": [
                    {
                        "path": "0",
                        "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0]}],
                    }
                ],
            }
        ],
    }
    _age(img)
    (d,) = scan_folder(
        str(tmp_path / "in"),
        settle_seconds=60,
        marker=".done",
        output_dir=None,
        label_name="nuclei",
    )
    assert (d.status, d.output) == ("segment", str(img / "labels" / "nuclei"))


def test_lock_is_exclusive_and_released_when_its_holder_dies(tmp_path):
    out = str(tmp_path / "x.labels.zarr")
    holder = _hold_lock(out)
    try:
        lock = OutputLock(out)
        assert lock.is_held() and not lock.acquire()
        assert lock.held_by()["pid"] == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: no cleanup code runs
        holder.wait()
    assert os.path.exists(lock_path(out))  # the file stays, the lock does not
    assert not lock.is_held()
    assert lock.acquire({"flow_run_id": "me"})
    lock.release()
    assert not os.path.exists(lock_path(out))


def test_only_one_of_many_simultaneous_claims_wins(tmp_path):
    out = str(tmp_path / "x.labels.zarr")
    n = 16
    barrier = threading.Barrier(n)
    results: list[bool] = []
    locks = [OutputLock(out) for _ in range(n)]

    def claim(lock: OutputLock) -> None:
        barrier.wait()
        results.append(lock.acquire())

    for _ in range(5):
        results.clear()
        threads = [threading.Thread(target=claim, args=(lk,)) for lk in locks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results.count(True) == 1
        for lk in locks:
            lk.release()


def test_run_segment_never_writes_a_held_or_complete_output(tmp_path):
    img = _store(tmp_path / "a.zarr")
    st = Settings(data_roots=(str(tmp_path),))
    req = prepare_segment(img, {"name": "threshold", "options": {"threshold": 10}}, settings=st)
    holder = _hold_lock(req.output)
    try:
        res = run_segment(req)
    finally:
        holder.kill()
        holder.wait()
    assert res["status"] == "busy" and res["held_by"]["flow_run_id"] == "other-run"
    assert output_state(req.output) == "absent"
    _complete_output(Path(req.output))
    stamp = os.stat(os.path.join(req.output, "zarr.json")).st_mtime_ns
    assert run_segment(req)["status"] == "already-segmented"
    assert os.stat(os.path.join(req.output, "zarr.json")).st_mtime_ns == stamp
    assert not os.path.exists(lock_path(req.output))


@pytest.mark.parametrize("name", ["a.zarr", "img.ome.zarr"])
def test_lock_and_staging_live_outside_zarr_stores(tmp_path, name):
    out = str(tmp_path / name / "labels" / "seg")
    assert os.path.dirname(lock_path(out)) == str(tmp_path)
    assert os.path.basename(lock_path(out)).startswith(".")


def _scan(folder, **kw):
    kw.setdefault("settle_seconds", 60)
    return scan_folder(str(folder), marker=".done", output_dir=None, label_name="seg", **kw)


def test_outputs_are_named_from_the_whole_input_name(tmp_path):
    """a.tif and a.zarr side by side get two outputs (by stem they shared a.labels.zarr,
    and the second was 'already segmented' forever with the other image's labels)."""
    w = tmp_path / "w"
    paths = [_store(w / "a.zarr"), _tiff(w / "a.tif"), _store(w / "a.ome.zarr")]
    for p in paths:
        _age(p)
    outs = {d.acquisition: d.output for d in _scan(w)}
    assert len(set(outs.values())) == 3, outs
    assert outs[str(w / "a.tif")] == str(w / "a.tif.labels.zarr")
    # the first one done does not make the other one "already segmented"
    _complete_output(w / "a.zarr.labels.zarr", image=paths[0])
    got = {Path(d.acquisition).name: d.status for d in _scan(w)}
    assert got["a.zarr"] == "already-segmented" and got["a.tif"] == "segment", got


def test_a_replaced_acquisition_is_segmented_again(tmp_path):
    w = tmp_path / "w"
    acq = _store(w / "run.zarr")
    _age(acq)
    _complete_output(w / "run.zarr.labels.zarr", image=acq)
    (d,) = _scan(w)
    assert d.status == "already-segmented"
    # the microscope writes a new acquisition under the same name
    import shutil

    shutil.rmtree(acq)
    _store(w / "run.zarr", shape=(16, 16))
    _age(acq, seconds=120)
    (d,) = _scan(w)
    assert (d.status, d.replace) == ("segment", True), d
    assert "another input" in d.detail
    # an output whose record names no input is not trusted as this input's labels
    _complete_output(w / "run.zarr.labels.zarr")
    (d,) = _scan(w)
    assert (d.status, d.replace) == ("segment", True)


def test_symlinks_are_checked_against_the_roots_before_opening(tmp_path):
    root = tmp_path / "root"
    w = root / "w"
    secret = _store(tmp_path / "secret" / "other.zarr")
    inside = _store(root / "elsewhere" / "ok.zarr")
    w.mkdir(parents=True)
    os.symlink(secret, w / "leak.zarr")
    os.symlink(inside, w / "fine.zarr")
    _age(secret)
    _age(inside)
    got = {Path(d.acquisition).name: d for d in _scan(w, roots=(str(root),))}
    assert got["leak.zarr"].status == "outside-roots"
    assert "outside the data roots" in got["leak.zarr"].detail
    assert got["leak.zarr"].output is None  # decided before it was opened
    assert got["fine.zarr"].status == "segment"
    assert not os.path.exists(str(w / "leak.zarr.labels.zarr"))

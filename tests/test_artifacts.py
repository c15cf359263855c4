"""Artifacts of a run, read back through the Prefect client."""

from __future__ import annotations

import time

import pytest
from conftest import CountingLabel, blobs
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from blockbuster.api import tile_process
from blockbuster.tasks import PROGRESS_KEY, SUMMARY_KEY, TILES_KEY

pytestmark = pytest.mark.usefixtures("client")


def latest(key, ready=lambda art: True, timeout=15.0):
    """The newest artifact ``key`` once ``ready(artifact)`` (the last ones are sent by the
    run's reporter thread just after the call returns)."""
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as c:
            arts = c.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                sort="CREATED_DESC",
                limit=1,
            )
        if arts and ready(arts[0]):
            return arts[0]
        assert time.monotonic() < deadline, f"no (ready) artifact {key}: {arts}"
        time.sleep(0.05)


def test_artifacts_describe_the_run(tmp_path):
    d = tmp_path / "calls"
    d.mkdir()
    out = str(tmp_path / "labels.zarr")
    img = blobs((60, 90), seed=2)
    img[:, 60:] = 0  # an empty column of tiles
    _, summary = tile_process(
        img,
        CountingLabel(str(d)),
        tile_shape=(20, 30),
        write_to=out,
        skip_empty=True,
        return_summary=True,
    )
    run = summary["flow_run_id"]
    assert run
    table = latest(TILES_KEY, lambda a: str(a.flow_run_id) == run)
    rows = table.data if isinstance(table.data, list) else __import__("json").loads(table.data)
    assert len(rows) == 9
    assert {"tile", "origin", "shape", "labels", "skipped", "fn_seconds", "seam_merges"} <= set(
        rows[0]
    )
    assert sum(r["skipped"] for r in rows) == 3
    md = latest(SUMMARY_KEY, lambda a: str(a.flow_run_id) == run)
    assert out in md.data and "labels after merge" in md.data
    latest(
        PROGRESS_KEY, lambda a: str(a.flow_run_id) == run and float(a.data) == pytest.approx(100.0)
    )
    assert summary["n_skipped"] == 3
    # all three were sent from the run's reporter thread, attached to its flow run


def test_tile_table_is_capped_and_the_full_table_is_next_to_the_output(tmp_path, monkeypatch):
    """More tiles than the artifact's cap: the artifact holds the slowest tiles and names
    the CSV file inside the output that holds every tile."""
    import csv

    from blockbuster.tasks import TILES_CSV
    from blockbuster.tasks import _report as report

    monkeypatch.setattr(report, "TABLE_ROWS", 4)
    out = str(tmp_path / "labels.zarr")
    img = blobs((60, 90), seed=2)
    _, summary = tile_process(
        img, CountingLabel(str(tmp_path)), tile_shape=(20, 30), write_to=out, return_summary=True
    )
    run = summary["flow_run_id"]
    table = latest(TILES_KEY, lambda a: str(a.flow_run_id) == run)
    rows = table.data if isinstance(table.data, list) else __import__("json").loads(table.data)
    assert len(rows) == 4
    path = f"{out}/{TILES_CSV}"
    assert f"the 4 slowest of 9 tiles; every tile: {path}" in table.description
    with open(path) as f:
        full = list(csv.DictReader(f))
    assert [int(r["tile"]) for r in full] == list(range(9))
    shown = {r["tile"] for r in rows}
    rest = [float(r["fn_seconds"]) for r in full if int(r["tile"]) not in shown]
    assert min(float(r["fn_seconds"]) for r in rows) >= max(rest) - 1e-4  # the slowest
    assert sum(int(r["labels"]) for r in full) == summary["labels_before_merge"]


def test_a_call_without_write_to_publishes_its_pictures_after_it_returns(tmp_path):
    """The default call (no write_to, compute=True) does not wait for its pictures: its
    temporary output holds none, and the run's reporter thread publishes both as
    artifacts of the run once they are drawn."""
    from blockbuster.tasks import PREVIEW_KEY, TILE_MAP_KEY

    img = blobs((60, 90), seed=4)
    lab, summary = tile_process(
        img, CountingLabel(str(tmp_path)), tile_shape=(20, 30), compute=True, return_summary=True
    )
    run = summary["flow_run_id"]
    assert lab.shape == img.shape and "pictures" not in summary
    preview = latest(PREVIEW_KEY, lambda a: str(a.flow_run_id) == run)
    assert "data:image/png;base64," in preview.data and "Also written to" not in preview.data
    latest(TILE_MAP_KEY, lambda a: str(a.flow_run_id) == run)

"""The two flows of blockbuster: ``tile-process`` and ``merge-tile-labels``.

Both run the same stages, each one Prefect task (cached, retried) in the flow's thread
that fans its tiles out to the Dask cluster in batches: plan -> estimate-empty (when
asked) -> segment (or, for the merge alone, index the given labels) -> scan-seams ->
build-lut -> relabel; then finalize (summary artifact, output marked complete, staging
dropped) in the flow itself (docs/orchestration.md says why, with measurements).
A staged record that fails its checksum while the stages read it (it was sound when
the run checked its staging) does not fail the run: the staging is checked again, the
failing records dropped, and the stages run again, recomputing only those tiles.

The flow decides what starts early: each stage's first batches are submitted to the
cluster as soon as what they need exists, before the next task run starts, so the
cluster works while Prefect records one task run's end and the next one's start.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from prefect import flow
from prefect.utilities.annotations import quote

from blockbuster.core import SeamTable, TileGrid, TileRecords
from blockbuster.errors import StagingCorruptError
from blockbuster.tasks import (
    TILES_CSV,
    Job,
    ProgressArtifact,
    empty_stage,
    finalize_stage,
    finish_output,
    lut_stage,
    plan_stage,
    publish_tiles_table,
    relabel_stage,
    scan_stage,
    segment_stage,
    start_pictures,
    start_pictures_early,
    start_relabel,
    start_scan,
    start_segment,
    tiles_csv,
    unfinished_tiles,
    wants_empty_stage,
)

__all__ = ["tile_process_flow", "merge_flow", "run_pipeline", "CORRUPT_RETRIES"]

log = logging.getLogger("blockbuster")

#: How often a run checks its staging again and reruns its stages after a staged record
#: fails its checksum mid-run (each time only the dropped tiles are recomputed).
CORRUPT_RETRIES = 2


def _flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    fid = flow_run.get_id()
    return str(fid) if fid else None


def _cancel_stale(job: Job, stage: str) -> None:
    """Cancel work started ahead for a stage whose task answered from its cache."""
    stale = job.take_started(stage)
    if stale is not None:
        stale.cancel()


def _stages(job: Job) -> tuple[TileRecords, dict[str, Any], Any, dict[str, Any]]:
    """Estimate-empty (when asked), segment, scan-seams, build-lut, relabel."""
    # Per-tile data is passed between stages inside quote(): Prefect would otherwise
    # walk every object of a task's parameters (~0.3 s per walk at 4096 tiles).
    empty = None
    if wants_empty_stage(job):
        empty = empty_stage(job, quote(unfinished_tiles(job)))
        _cancel_stale(job, "estimate-empty")
        job.start_ahead("segment", start_segment(job, empty))
    # the records and seams as NumPy rows (a result cached by an older version may be
    # a list of dicts or tuples)
    records = TileRecords.of(segment_stage(job, quote(empty)), job.plan.grid)
    _cancel_stale(job, "segment")
    job.details["tiles"] = records
    job.start_ahead("seams", start_scan(job, records))
    scan = scan_stage(job, quote(records))
    scan["seams"] = SeamTable.of(scan["seams"], job.plan.grid.ndim)
    _cancel_stale(job, "seams")  # the scan's result came from the cache
    publish_tiles_table(job, records, scan["seams"])
    start_pictures_early(job, records, scan["seams"])  # the tile map, while the rest runs
    table = lut_stage(job, quote(scan))
    # the table holds what it needs of the label pairs: the run keeps the scan's totals
    # and seams, not the pairs (16 B a pair; a copy: the cached result is left as it is)
    scan = {k: v for k, v in scan.items() if k != "pairs"}
    job.start_ahead("relabel", start_relabel(job, table))
    rel = relabel_stage(job, quote(table))
    return records, scan, table, rel


def run_pipeline(job: Job, keep_staging: bool = False) -> dict[str, Any]:
    """The stages, in order; returns the run summary.

    Artifacts go through ``job.reporter`` (a background thread); the caller closes it
    once the flow has returned, without waiting for the last calls.
    """
    t0 = time.perf_counter()
    plan = job.plan
    job.progress_artifact = ProgressArtifact(job.reporter, job.run_key)
    plan_stage(job, job.finished_records().n_filled)
    for attempt in range(CORRUPT_RETRIES + 1):
        try:
            records, scan, table, rel = _stages(job)
            break
        except StagingCorruptError as exc:
            # a staged record went bad after the run checked the staging (a disk, a
            # stray write): drop what fails, then run the stages again; only the
            # dropped tiles are recomputed, the others resume
            if attempt == CORRUPT_RETRIES:
                raise
            dropped = job.drop_corrupt_records()
            log.warning(
                "%s; recomputing %d staged tile(s) that fail their checksums: %s",
                exc,
                len(dropped),
                dropped,
            )
    pictures_work = start_pictures(job, rel["dtype"])  # the preview, in the background
    tiles = TileGrid(plan.grid.shape, plan.out_chunks)  # merge units: their tiles
    n_voxels = 1
    for s in plan.grid.shape:
        n_voxels *= s
    elapsed = time.perf_counter() - t0
    rows = records.rows
    summary = {
        "run_key": plan.run_key,
        "flow_run_id": _flow_run_id(),
        "image": job.image,
        "fn": job.fn,
        # None: relabelled into the array the call returns, no store written
        "output": None if job.out.labels is not None else job.out.path,
        "n_tiles": tiles.n_tiles,
        "grid_shape": list(tiles.grid_shape),
        "tile_shape": list(tiles.tile_shape),
        "overlap": list(plan.grid.overlap),
        "merge": plan.merge,
        "n_skipped": int(np.count_nonzero(rows["skipped"])),
        "n_resumed": int(np.count_nonzero(rows["resumed"])),
        # merge units join labels inside a unit before the table: count the tiles' labels
        "labels_before_merge": table.n_nodes
        + int((rows["unit_labels"] - rows["n_labels"])[rows["unit_labels"] >= 0].sum()),
        "labels_after_merge": table.n_labels,
        "max_label": table.max_label,
        "dtype": rel["dtype"],
        "sequential_labels": plan.sequential,
        "seam_pairs_merged": scan["merged"]
        + int(rows["unit_pairs"][rows["unit_pairs"] >= 0].sum()),
        "seam_pairs_unmerged": scan["unmerged"],
        "objects_spanning_halo": scan["spanning"],
        "timings": {**job.timings, "total": elapsed},
        "voxels_per_second": n_voxels / elapsed if elapsed > 0 else 0.0,
        "staging": plan.staging_root,
    }
    if plan.unit_tile_shape is not None:
        summary["merge_units"] = {
            "n_units": plan.grid.n_tiles,
            "unit_shape": list(plan.grid.tile_shape),
        }
    summary["skipped_fraction"] = summary["n_skipped"] / max(plan.grid.n_tiles, 1)
    # per-seam statistics as NumPy rows; read as dicts (SeamTable), like the tiles
    job.details["seams"] = scan["seams"]
    if not job.out.temporary:  # the full per-tile table (the artifact is capped)
        job.out.write_file(TILES_CSV, tiles_csv(records, scan["seams"]))
    if job.out.temporary:
        # a temporary output (no write_to) holds no pictures and is gone with the
        # process: the pictures are only artifacts, published by the run's reporter
        # thread once drawn; the call does not wait for them
        job.reporter.submit(pictures_work.publish_when_drawn)
        pictures = None
    else:
        # the output's files go to stable storage while the pictures are drawn; the
        # pictures are then in the output before it is marked complete
        finish_output(job)
        pictures = pictures_work.result()
    if pictures is not None:
        summary["pictures"] = pictures
        summary["timings"]["pictures"] = job.timings["pictures"]
        summary["timings"]["pictures_cpu"] = job.timings["pictures_cpu"]
    summary["timings"]["pictures_wait"] = job.timings.get("pictures_wait", 0.0)
    finalize_stage(job, summary, keep_staging)
    return summary


@flow(name="tile-process", validate_parameters=False, log_prints=False)
def tile_process_flow(job: Job, keep_staging: bool = False) -> dict[str, Any]:
    """Tile an image, run a function on every tile, merge into global labels."""
    return run_pipeline(job, keep_staging)


@flow(name="merge-tile-labels", validate_parameters=False, log_prints=False)
def merge_flow(job: Job, keep_staging: bool = False) -> dict[str, Any]:
    """Merge per-tile labels someone already has into global labels."""
    return run_pipeline(job, keep_staging)

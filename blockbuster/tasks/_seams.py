"""The scan-seams stage (label pairs across every seam, touch or IoU, in batches of
tiles on the cluster) and the build-lut stage (connected components over those pairs:
the global merge table), one Prefect task each."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from prefect import get_run_logger

from blockbuster.cluster import StageWork
from blockbuster.core import MergeTable, SeamTable, TileRecords
from blockbuster.worker import scan_tiles

from ._common import fan_out, stage_task
from ._job import Job
from ._progress import StageProgress

__all__ = ["scan_stage", "lut_stage", "start_scan"]


def start_scan(job: Job, records: TileRecords) -> StageWork:
    """Submit the seam scan's batches (the segment stage does so as it ends);
    ``info["counts"]``: labels per tile."""
    plan = job.plan
    counts = TileRecords.of(records, plan.grid).rows["n_labels"].astype(np.int64)
    offsets = np.zeros_like(counts)
    if counts.size > 1:
        np.cumsum(counts[:-1], out=offsets[1:])
    tiles = [n for n in range(plan.grid.n_tiles) if counts[n] > 0]
    return fan_out(
        job,
        scan_tiles,
        tiles,
        lambda b: lambda: (plan, b, counts, offsets),
        name="seams",
        info={"counts": counts},
        # a tile's seams take ~1 ms: one batch per worker thread until 64 tiles make a
        # batch (a 16-tile call's scan in 8 batches of 2 took ~35 ms on the workers,
        # mostly the batches' round trips, for ~10 ms of work)
        max_batch=64,
        min_batches_per_thread=1,
    )


@stage_task("scan-seams", cache="seams")
def scan_stage(job: Job, records: TileRecords) -> dict[str, Any]:
    """Find label pairs across all seams (touch or IoU), in batches of tiles; returns
    the pairs (node numbers), labels per tile and per-seam statistics (``seams``: a
    :class:`~blockbuster.core.SeamTable`)."""
    logger = get_run_logger()
    plan = job.plan
    work = job.take_started("seams") or start_scan(job, records)
    batches = work.batches
    bar = StageProgress("seams", work.n_tiles, bar=job.progress)
    try:
        results = work.gather(lambda i, r: bar.update(len(batches[i])))
    finally:
        bar.close()
    found = [p for p, _ in results if len(p)]
    seams = SeamTable.concat((ss for _, ss in results), plan.grid.ndim)
    pairs = np.concatenate(found) if found else np.zeros((0, 2), np.int64)
    del results, found
    job.timings["seams"] = time.perf_counter() - work.started
    merged = seams.total("merged")
    unmerged = seams.total("unmerged")
    spanning = seams.total("spanning")
    logger.info(
        "seams: %d label pairs merged, %d candidate pairs left apart, %d objects "
        "wider than the halo, in %.2f s",
        merged,
        unmerged,
        spanning,
        job.timings["seams"],
    )
    if spanning and plan.merge == "overlap":
        logger.warning(
            "%d objects reach past the halo at a seam; consider a larger overlap (now %s)",
            spanning,
            list(plan.grid.overlap),
        )
    return {
        "pairs": pairs,
        "seams": seams,
        "counts": work.info["counts"],
        "merged": merged,
        "unmerged": unmerged,
        "spanning": spanning,
    }


@stage_task("build-lut", cache="table")
def lut_stage(job: Job, scan: dict[str, Any]) -> MergeTable:
    """Connected components over the seam pairs: the global relabelling table."""
    t0 = time.perf_counter()
    table = MergeTable.build(scan["counts"], scan["pairs"], sequential=job.plan.sequential)
    job.timings["lut"] = time.perf_counter() - t0
    get_run_logger().info(
        "merge table: %d tile labels -> %d labels (max id %d, %s)",
        table.n_nodes,
        table.n_labels,
        table.max_label,
        table.dtype,
    )
    return table

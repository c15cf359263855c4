"""The estimate-empty stage (``skip_empty=True`` on a stored image): which tiles hold no
pixel above the threshold, so that the segment stage never reads them nor calls ``fn``.

In-memory inputs (dask or NumPy arrays) are decided tile by tile inside the segment
stage instead: computing a dask block twice (once here, once to segment it) could cost
far more than the check.
"""

from __future__ import annotations

import time

import numpy as np
from prefect import get_run_logger

from blockbuster.cluster import StageWork
from blockbuster.worker import empty_tiles

from ._common import fan_out, stage_task
from ._job import Job
from ._pictures import preview_canvas
from ._progress import StageProgress

__all__ = ["empty_stage", "start_empty", "wants_empty_stage"]


def wants_empty_stage(job: Job) -> bool:
    """Whether this run has an estimate-empty stage (skip_empty on a stored input)."""
    return bool(job.plan.skip_empty) and job.source.kind == "stored"


def start_empty(job: Job, todo: list[int]) -> StageWork:
    """Submit the maxima of the unfinished tiles' cores, in batches."""
    plan, reader = job.plan, job.source.reader
    canvas = preview_canvas(job)  # the empty tiles' image samples come back from here
    preview = canvas.params if canvas is not None else None
    return fan_out(
        job,
        empty_tiles,
        todo,
        lambda b: lambda: (plan, b, reader, preview),
        name="estimate-empty",
        info={"todo": todo},
    )


@stage_task("estimate-empty", cache="empty")
def empty_stage(job: Job, todo: list[int]) -> np.ndarray:
    """One flag per tile of the grid: True where the tile is empty (``todo``: the tiles
    to look at; the others are False)."""
    plan = job.plan
    work = job.take_started("estimate-empty") or start_empty(job, todo)
    bar = StageProgress("estimate-empty", work.n_tiles, bar=job.progress)
    batches = work.batches
    canvas = preview_canvas(job)

    def done(i, r):
        if isinstance(r, tuple):  # (flags, the empty tiles' image samples)
            for n, at, pixels in r[1]:
                if canvas is not None:
                    canvas.add_image(n, at, pixels)
        bar.update(len(batches[i]))

    try:
        results = work.gather(done)
    finally:
        bar.close()
    flags = [r[0] if isinstance(r, tuple) else r for r in results]
    empty = np.zeros(plan.grid.n_tiles, dtype=bool)
    for batch, got in zip(batches, flags):
        empty[list(batch)] = got
    job.timings["estimate-empty"] = time.perf_counter() - work.started
    get_run_logger().info(
        "estimate-empty: %d of %d tiles looked at are empty (threshold %s), in %.2f s",
        int(empty.sum()),
        len(work.info["todo"]),
        plan.empty_threshold if plan.empty_threshold is not None else 0,
        job.timings["estimate-empty"],
    )
    return empty

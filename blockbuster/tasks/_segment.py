"""The segment stage: every unfinished tile through ``fn``, staged, in batches.

The work is started by :func:`start_segment`, which needs only the cluster (not
Prefect): the driver calls it as soon as the cluster is up (:func:`start_first`), so
tiles are segmented while Prefect's temporary API server is still starting (~12 s on a
2-core machine with a new database). The ``segment`` task then adopts the batches in
flight and submits the rest.
"""

from __future__ import annotations

import time

import numpy as np
from prefect import get_run_logger

from blockbuster.cluster import StageWork, client_threads, slots, split_batches
from blockbuster.core import TileRecords
from blockbuster.io import full_slices
from blockbuster.worker import PREVIEW_FIELD, segment_tiles

from ._common import stage_task, tiles_word
from ._empty import start_empty, wants_empty_stage
from ._job import Job
from ._pictures import preview_canvas
from ._progress import StageProgress
from ._relabel import prepare_in_memory

__all__ = ["segment_stage", "start_segment", "start_first", "unfinished_tiles"]


def unfinished_tiles(job: Job) -> list[int]:
    """The tiles no earlier run finished (resume)."""
    return np.flatnonzero(~job.finished_records().filled).tolist()


def start_first(job: Job) -> None:
    """Start the run's first stage with work (estimate-empty, else segment) on the
    cluster, before Prefect is ready; its task adopts it."""
    if wants_empty_stage(job):
        job.start_ahead("estimate-empty", start_empty(job, unfinished_tiles(job)))
    else:
        job.start_ahead("segment", start_segment(job))
    prepare_in_memory(job)  # the returned array, while the tiles are segmented


def start_segment(job: Job, empty: np.ndarray | None = None) -> StageWork:
    """Split the unfinished tiles into batches and submit the first (``info``: the
    finished tiles' ``records`` and the tile numbers ``todo``). ``empty``: the
    estimate-empty stage's flags; those tiles are staged as skipped, never read."""
    plan, src = job.plan, job.source
    records = job.finished_records().copy()
    todo = unfinished_tiles(job)
    client = job.client()
    # batches that ask for a resource (GPU=1) can only run on the workers offering it
    nthreads = slots(client, job.resources) if job.resources else client_threads(client)
    fn = job.tile_fn
    # a merge's index pass costs in proportion to voxels: small tiles, bigger batches;
    # fn's cost is unknown, so its batches keep at most 32 tiles (progress, retries)
    batches = split_batches(
        todo, nthreads, tile_voxels=plan.grid.tile_voxels if fn is None else None
    )
    canvas = preview_canvas(job)  # each tile read returns its image samples
    preview = canvas.params if canvas is not None and fn is not None else None
    if src.kind == "stored":

        def args_for(batch):
            flags = None if empty is None else [bool(empty[n]) for n in batch]
            return lambda: (plan, fn, batch, src.reader, None, flags, preview)
    else:
        arr = src.dask_array

        def args_for(batch):
            def make():
                datas = client.compute(
                    [arr[full_slices(plan.grid.ext_slices(n), plan.channel_axis)] for n in batch]
                )
                return (plan, fn, batch, None, datas, None, preview)

            return make

    return StageWork.submit(
        client,
        segment_tiles,
        batches,
        args_for,
        name="segment",
        # asked again as batches finish: the window follows workers joining and leaving
        window=lambda: 2 * slots(client, job.resources) + 2,
        resources=job.resources,
        info={"records": records, "todo": todo},
    )


@stage_task("segment", cache="segment")
def segment_stage(job: Job, empty: np.ndarray | None = None) -> TileRecords:
    """Run ``fn`` on every tile not finished yet (and not in ``empty``); return one
    record per tile (kept as NumPy rows from the moment a batch arrives)."""
    logger = get_run_logger()
    plan = job.plan
    work = job.take_started("segment") or start_segment(job, empty)
    records, todo = work.info["records"], work.info["todo"]
    n_resumed = records.n_filled
    if n_resumed:
        logger.info(
            "resuming: %d of %d tiles already segmented, %d to go",
            n_resumed,
            plan.grid.n_tiles,
            len(todo),
        )
    bar = StageProgress(
        "segment",
        plan.grid.n_tiles,
        bar=job.progress,
        done=n_resumed,
        artifact=job.progress_artifact,
        span=(0.0, 90.0),
    )

    canvas = preview_canvas(job)

    def done(i, recs):
        for r in recs:
            sampled = r.pop(PREVIEW_FIELD, None)  # kept off the record (and the cache)
            if sampled is not None and canvas is not None:
                canvas.add_image(r["tile"], *sampled)
        records.add_many(recs)  # the batch's dicts are dropped: only rows are kept
        bar.update(len(recs))

    try:
        work.gather(done)
    finally:
        bar.close()
    job.timings["segment"] = time.perf_counter() - work.started
    missing = np.flatnonzero(~records.filled)
    if missing.size:  # pragma: no cover - every batch returns a record per tile
        raise RuntimeError(f"the segment stage returned no record for tiles {missing[:10]}")
    out = records
    n_skipped = int(np.count_nonzero(out.rows["skipped"]))
    logger.info(
        "segmented %d %s (%d resumed, %d skipped as empty) in %.2f s",
        len(todo),
        tiles_word(plan),
        n_resumed,
        n_skipped,
        job.timings["segment"],
    )
    return out

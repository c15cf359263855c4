"""The segment stage: every unfinished tile through ``fn``, staged, in batches.

The work is started by :func:`start_segment`, which needs only the cluster (not
Prefect): the driver calls it as soon as the cluster is up, so tiles are segmented
while Prefect's temporary API server is still starting (~12 s on a 2-core machine
with a new database). The ``segment-tiles`` task then adopts the batches in flight and
submits the rest.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger, task

from blockbuster.cluster import StageWork, client_threads, split_batches
from blockbuster.io import Staging, full_slices
from blockbuster.worker import segment_tiles

from ._common import stage_cache_policy, tiles_word
from ._job import Job
from ._progress import StageProgress
from ._seams import start_scan

__all__ = ["segment_stage", "start_segment"]


def start_segment(job: Job) -> StageWork:
    """List finished tiles in the staging, split the rest into batches, submit the first
    (``info``: the finished tiles' ``records`` and the tile numbers ``todo``)."""
    plan, src = job.plan, job.source
    staging = Staging(plan.staging_root)
    records: dict[int, dict[str, Any]] = {}
    for n in staging.finished_tiles():
        rec = staging.read_record(n)
        rec["resumed"] = True
        records[n] = rec
    todo = [n for n in range(plan.grid.n_tiles) if n not in records]
    client = job.client()
    nthreads = client_threads(client)
    fn = job.tile_fn
    # a merge's index pass costs in proportion to voxels: small tiles, bigger batches;
    # fn's cost is unknown, so its batches keep at most 32 tiles (progress, retries)
    batches = split_batches(
        todo, nthreads, tile_voxels=plan.grid.tile_voxels if fn is None else None
    )
    if src.kind == "stored":

        def args_for(batch):
            return lambda: (plan, fn, batch, src.reader)
    else:
        arr = src.dask_array

        def args_for(batch):
            def make():
                datas = client.compute(
                    [arr[full_slices(plan.grid.ext_slices(n), plan.channel_axis)] for n in batch]
                )
                return (plan, fn, batch, None, datas)

            return make

    return StageWork.submit(
        client,
        segment_tiles,
        batches,
        args_for,
        name="segment",
        window=2 * nthreads + 2,
        resources=job.resources,
        info={"records": records, "todo": todo},
    )


@task(name="segment-tiles", cache_policy=stage_cache_policy("segment"), persist_result=True)
def segment_stage(job: Job) -> list[dict[str, Any]]:
    """Run ``fn`` on every tile not finished yet; return one record per tile."""
    logger = get_run_logger()
    plan = job.plan
    work = job.take_started("segment") or start_segment(job)
    records, todo = work.info["records"], work.info["todo"]
    n_resumed = len(records)
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

    def done(i, recs):
        for r in recs:
            records[r["tile"]] = r
        bar.update(len(recs))

    try:
        work.gather(done)
    finally:
        bar.close()
    job.timings["segment"] = time.perf_counter() - work.started
    out = [records[n] for n in range(plan.grid.n_tiles)]
    job.start_ahead("seams", start_scan(job, out))  # while this task run ends
    n_skipped = sum(r["skipped"] for r in out)
    logger.info(
        "segmented %d %s (%d resumed, %d skipped as empty) in %.2f s",
        len(todo),
        tiles_word(plan),
        n_resumed,
        n_skipped,
        job.timings["segment"],
    )
    return out

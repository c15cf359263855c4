"""The segment stage: every unfinished tile through ``fn``, staged, in batches."""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger, task

from ..core.staging import Staging
from ..core.tile_ops import segment_tiles
from ..core.sources import full_slices
from ..execution import run_batches, split_batches
from .common import stage_cache_policy, threads_of
from .job import Job
from .progress import StageProgress

__all__ = ["segment_stage"]


@task(name="segment-tiles", cache_policy=stage_cache_policy("segment"), persist_result=True)
def segment_stage(job: Job, progress_artifact=None) -> list[dict[str, Any]]:
    """Run ``fn`` on every tile not finished yet; return one record per tile."""
    logger = get_run_logger()
    t0 = time.perf_counter()
    plan, src = job.plan, job.source
    staging = Staging(plan.staging_root)
    finished = set(staging.finished_tiles())
    records: dict[int, dict[str, Any]] = {}
    for n in finished:
        rec = staging.read_record(n)
        rec["resumed"] = True
        records[n] = rec
    todo = [n for n in range(plan.grid.n_tiles) if n not in finished]
    if finished:
        logger.info("resuming: %d of %d tiles already segmented, %d to go",
                    len(finished), plan.grid.n_tiles, len(todo))
    client = job.client()
    batches = split_batches(todo, threads_of(client))
    fn = job.tile_fn

    if src.kind == "stored":
        def args_for(batch):
            return lambda: (plan, fn, batch, src.reader)
    else:
        arr = src.dask_array

        def args_for(batch):
            def make():
                datas = client.compute([arr[full_slices(plan.grid.ext_slices(n),
                                                        plan.channel_axis)] for n in batch])
                return (plan, fn, batch, None, datas)
            return make

    bar = StageProgress("segment", plan.grid.n_tiles, bar=job.progress, done=len(finished),
                        artifact_id=progress_artifact, span=(0.0, 90.0))

    def done(i, recs):
        for r in recs:
            records[r["tile"]] = r
        bar.update(len(recs))

    try:
        run_batches(client, segment_tiles, [args_for(b) for b in batches], name="segment",
                    window=2 * threads_of(client) + 2, on_done=done,
                    resources=job.resources)
    finally:
        bar.close()
    job.timings["segment"] = time.perf_counter() - t0
    out = [records[n] for n in range(plan.grid.n_tiles)]
    n_skipped = sum(r["skipped"] for r in out)
    logger.info("segmented %d tiles (%d resumed, %d skipped as empty) in %.2f s",
                len(todo), len(finished), n_skipped, job.timings["segment"])
    return out

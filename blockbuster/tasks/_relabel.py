"""The relabel stage: output chunk = lut_slice[staged chunk], one writer per chunk."""

from __future__ import annotations

import time

import numpy as np
from prefect import get_run_logger

from blockbuster.cluster import StageWork
from blockbuster.core import MergeTable, TileRecords
from blockbuster.worker import relabel_tiles, table_luts

from ._common import fan_out, stage_task, tiles_word
from ._job import Job
from ._pictures import preview_canvas
from ._progress import StageProgress

__all__ = ["relabel_stage", "start_relabel"]


def start_relabel(job: Job, table: MergeTable) -> StageWork:
    """Create the output (marked incomplete) and submit the first relabel batches (the
    flow does so as soon as the merge table exists)."""
    t0 = time.perf_counter()
    plan, out = job.plan, job.out
    dtype = table.dtype
    out.create(
        plan.grid.shape,
        dtype,
        plan.out_chunks,
        {"run_key": plan.run_key, "n_labels": table.n_labels},
        shards=plan.out_shards,
    )
    tiles = [n for n in range(plan.grid.n_tiles) if table.counts[n] > 0]
    path, token = out.array_path, out.token
    reader = job.source.reader if plan.read_back else None  # labels read from the input
    records = job.details.get("tiles")
    # the tiles whose record says their ids are 1..n (nothing staged is read for them)
    plain = (
        TileRecords.of(records, plan.grid).rows["ids_1_to_n"] == 1
        if records is not None
        else np.zeros(plan.grid.n_tiles, bool)
    )
    canvas = preview_canvas(job)  # each tile written returns its samples (final ids)
    preview = canvas.params if canvas is not None else None
    return fan_out(
        job,
        relabel_tiles,
        tiles,
        lambda b: (
            lambda: (
                plan,
                b,
                table_luts(table, b, dtype),
                path,
                token,
                reader,
                plain[b].tolist(),
                preview,
            )
        ),
        name="relabel",
        info={"dtype": str(dtype)},
        started=t0,
    )


@stage_task("relabel", cache=None)
def relabel_stage(job: Job, table: MergeTable) -> dict:
    """Write every labelled tile into the output (created incomplete)."""
    work = job.take_started("relabel") or start_relabel(job, table)
    batches = work.batches
    bar = StageProgress(
        "relabel",
        work.n_tiles,
        bar=job.progress,
        artifact=job.progress_artifact,
        span=(90.0, 100.0),
    )
    canvas = preview_canvas(job)

    def done(i, r):
        if isinstance(r, tuple):  # (voxels, the preview's samples of the batch's tiles)
            for at, pixels in r[1]:
                if canvas is not None:
                    canvas.add_labels(at, pixels)
        bar.update(len(batches[i]))

    try:
        results = work.gather(done)
    finally:
        bar.close()
    voxels = [r[0] if isinstance(r, tuple) else r for r in results]
    job.timings["relabel"] = time.perf_counter() - work.started
    n_tiles = work.n_tiles
    get_run_logger().info(
        "relabelled %d %s (%d voxels) in %.2f s",
        n_tiles,
        tiles_word(job.plan),
        sum(voxels),
        job.timings["relabel"],
    )
    return {"dtype": work.info["dtype"], "tiles_written": n_tiles, "voxels": int(sum(voxels))}

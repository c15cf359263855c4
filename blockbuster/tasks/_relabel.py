"""The relabel stage: output chunk = lut_slice[staged chunk], one writer per chunk."""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import Future

import numpy as np
from prefect import get_run_logger

from blockbuster.cluster import StageWork, split_batches
from blockbuster.core import MergeTable, TileRecords
from blockbuster.io import is_url
from blockbuster.worker import relabel_into, relabel_tiles, table_luts, touched_zeros

from ._common import fan_out, stage_task, tiles_word
from ._job import Job
from ._pictures import preview_canvas
from ._progress import StageProgress

__all__ = ["relabel_stage", "start_relabel", "relabels_in_memory", "prepare_in_memory"]


def relabels_in_memory(job: Job) -> bool:
    """Whether the labels go into an array in this process rather than a store: the
    caller asked for an array and no store (``compute=True`` without ``write_to``), the
    staging is on this machine, and the tiles are not merge units (written as shards).
    Nothing of the output is written then: no chunk encoded, written, read back and
    decoded again (docs/benchmarks.md, section 10)."""
    plan = job.plan
    return (
        job.out.in_memory
        and plan.unit_tile_shape is None
        and not is_url(plan.staging_root)
        and not (plan.read_back and is_url(getattr(job.source.reader, "path", "") or ""))
    )


#: The dtype of the array :func:`prepare_in_memory` makes ahead: what the merge table
#: of all but runs of more than 2**32 - 1 labels gives (a table needing another makes
#: its own array).
PREPARED_DTYPE = np.dtype(np.uint32)


#: The largest array :func:`prepare_in_memory` maps ahead: above it the array is made
#: when the relabel starts, its pages mapped as tiles are written (as ``np.zeros``
#: does), so that a large, mostly empty result does not hold all its memory from the
#: start, and its page faults are a small part of a run of that size.
PREPARE_MAX_BYTES = 64 << 20


def prepare_in_memory(job: Job) -> None:
    """For labels relabelled into memory (:func:`relabels_in_memory`): make the array
    they go into now, its pages mapped, in a thread, while the tiles are segmented. The
    relabel stage then writes into mapped memory (a fresh 4096² uint32 array spent
    ~40 ms of page faults in it, a third of a warm 16-tile call's relabel). Only up to
    :data:`PREPARE_MAX_BYTES`."""
    if not relabels_in_memory(job):
        return
    shape = tuple(job.plan.grid.shape)
    if math.prod(shape) * PREPARED_DTYPE.itemsize > PREPARE_MAX_BYTES:
        return
    fut: Future = Future()

    def make() -> None:
        try:
            fut.set_result(touched_zeros(shape, PREPARED_DTYPE))
        except BaseException as exc:  # pragma: no cover - out of memory: made later
            fut.set_exception(exc)

    threading.Thread(target=make, name="blockbuster-prepare-labels", daemon=True).start()
    job.prepared_labels = fut


def _labels_array(job: Job, dtype: np.dtype) -> np.ndarray:
    """The array the labels go into: the one made ahead when it has ``dtype``."""
    fut, job.prepared_labels = job.prepared_labels, None
    if fut is not None and np.dtype(dtype) == PREPARED_DTYPE:
        try:
            return fut.result()
        except Exception:  # pragma: no cover - made here instead
            pass
    return np.zeros(job.plan.grid.shape, dtype)


def start_relabel(job: Job, table: MergeTable) -> StageWork:
    """Create the output (marked incomplete) and submit the first relabel batches (the
    flow does so as soon as the merge table exists); or, for labels relabelled into
    memory (:func:`relabels_in_memory`), start filling the array in threads here."""
    t0 = time.perf_counter()
    plan, out = job.plan, job.out
    dtype = table.dtype
    if relabels_in_memory(job):
        return _start_in_memory(job, table, t0)
    out.create(
        plan.grid.shape,
        dtype,
        plan.out_chunks,
        {"run_key": plan.run_key, "n_labels": table.n_labels},
        shards=plan.out_shards,
    )
    tiles = [n for n in range(plan.grid.n_tiles) if table.counts[n] > 0]
    path, token, fmt = out.array_path, out.token, out.created_format
    reader = job.source.reader if plan.read_back else None  # labels read from the input
    plain = _ids_1_to_n(job)
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
                fmt,
            )
        ),
        name="relabel",
        info={"dtype": str(dtype)},
        started=t0,
    )


def _ids_1_to_n(job: Job) -> np.ndarray:
    """Per tile: its record says its ids are 1..n (nothing staged is read for it)."""
    records = job.details.get("tiles")
    if records is None:
        return np.zeros(job.plan.grid.n_tiles, bool)
    return TileRecords.of(records, job.plan.grid).rows["ids_1_to_n"] == 1


def _start_in_memory(job: Job, table: MergeTable, t0: float) -> StageWork:
    from dask.system import cpu_count

    plan = job.plan
    dtype = table.dtype
    result = _labels_array(job, dtype)
    job.out.labels = result
    tiles = [n for n in range(plan.grid.n_tiles) if table.counts[n] > 0]
    reader = job.source.reader if plan.read_back else None
    plain = _ids_1_to_n(job)
    canvas = preview_canvas(job)
    preview = canvas.params if canvas is not None else None
    threads = max(1, cpu_count())
    batches = split_batches(tiles, threads, tile_voxels=plan.grid.tile_voxels)
    return StageWork.here(
        relabel_into,
        batches,
        lambda b: (
            lambda: (
                plan,
                b,
                table_luts(table, b, dtype),
                result,
                reader,
                plain[b].tolist(),
                preview,
            )
        ),
        name="relabel",
        threads=threads,
        info={"dtype": str(dtype)},
        started=t0,
    )


@stage_task("relabel", cache=None)
def relabel_stage(job: Job, table: MergeTable) -> dict:
    """Write every labelled tile into the output (created incomplete), or into the
    array in this process (:func:`relabels_in_memory`)."""
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
            if canvas is not None:
                canvas.paint_pending()  # a merge's preview: the batch's colours, now
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

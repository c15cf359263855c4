"""The two flows of blockbuster: ``tile-process`` and ``merge-tile-labels``.

Both run the same stages: segment (or, for the merge alone, read the given labels) ->
scan seams -> build the merge table -> relabel -> report -> finalize. Each stage is one
Prefect task in the flow's thread; tiles are fanned out to the Dask cluster in batches
(docs/orchestration.md says why, with measurements).
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.utilities.annotations import quote

from ..tasks.common import NO_CACHE
from ..tasks.job import Job
from ..tasks.progress import PROGRESS_KEY
from ..tasks.relabel import relabel_stage
from ..tasks.report import report_stage
from ..tasks.seams import build_lut_stage, scan_seams_stage
from ..tasks.segment import segment_stage

__all__ = ["tile_process_flow", "merge_flow", "run_pipeline"]

STAGES = ("segment", "seams", "lut")


def _progress_artifact(job: Job):
    try:
        from prefect.artifacts import create_progress_artifact
        return create_progress_artifact(0.0, key=PROGRESS_KEY,
                                        description=f"run {job.run_key}: starting")
    except Exception:  # pragma: no cover - reporting must never break a run
        get_run_logger().debug("could not create the progress artifact", exc_info=True)
        return None


@task(name="finalize", cache_policy=NO_CACHE, persist_result=False)
def finalize_stage(job: Job, summary: dict[str, Any], keep_staging: bool) -> None:
    """Mark the output complete (its very last write), then drop the staging area."""
    job.out.mark_complete({"result_key": job.plan.result_key, **{k: summary[k] for k in (
        "run_key", "n_tiles", "labels_after_merge", "labels_before_merge", "dtype",
        "sequential_labels", "merge")}},
        executor=job.client().get_executor() if job.out.is_ngff else None)
    if not keep_staging:
        from ..core.staging import Staging
        Staging(job.plan.staging_root).remove()
        _drop_cached_results(job)


def _drop_cached_results(job: Job) -> None:
    """Cached stage results name a staging generation that no longer exists: delete them
    from Prefect's local result storage rather than let them pile up."""
    import os
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH
    from ..tasks.common import stage_key
    try:
        base = os.path.expanduser(str(PREFECT_LOCAL_STORAGE_PATH.value()))
    except Exception:  # pragma: no cover
        return
    for stage in STAGES:
        key = stage_key(stage, job.run_key, job.generation)
        for path in (os.path.join(base, key), os.path.join(base, key + ".lock")):
            try:
                os.remove(path)
            except OSError:
                pass


def run_pipeline(job: Job, keep_staging: bool = False) -> dict[str, Any]:
    """The stages, in order; returns the run summary."""
    t0 = time.perf_counter()
    plan = job.plan
    progress_id = _progress_artifact(job)
    # Per-tile data is passed between stages inside quote(): Prefect would otherwise
    # walk every object of a task's parameters (~0.3 s per walk at 4096 tiles).
    records = segment_stage(job, progress_id)
    job.details["tiles"] = records
    scan = scan_seams_stage(job, quote(records))
    table = build_lut_stage(job, quote(scan))
    rel = relabel_stage(job, quote(table), progress_id)
    n_voxels = 1
    for s in plan.grid.shape:
        n_voxels *= s
    elapsed = time.perf_counter() - t0
    summary = {
        "run_key": plan.run_key, "image": job.image, "fn": job.fn, "output": job.out.path,
        "n_tiles": plan.grid.n_tiles, "grid_shape": list(plan.grid.grid_shape),
        "tile_shape": list(plan.grid.tile_shape), "overlap": list(plan.grid.overlap),
        "merge": plan.merge, "n_skipped": sum(r["skipped"] for r in records),
        "n_resumed": sum(r["resumed"] for r in records),
        "labels_before_merge": table.n_nodes, "labels_after_merge": table.n_labels,
        "max_label": table.max_label, "dtype": rel["dtype"],
        "sequential_labels": plan.sequential,
        "seam_pairs_merged": scan["merged"], "seam_pairs_unmerged": scan["unmerged"],
        "objects_spanning_halo": scan["spanning"],
        "timings": {**job.timings, "total": elapsed},
        "voxels_per_second": n_voxels / elapsed if elapsed > 0 else 0.0,
        "staging": plan.staging_root,
    }
    summary["skipped_fraction"] = summary["n_skipped"] / max(plan.grid.n_tiles, 1)
    job.details["seams"] = [
        {"tile_a": a, "tile_b": b, "delta": list(d), "merged": m, "unmerged": u, "spanning": s}
        for a, b, d, m, u, s in scan["seams"]]
    report_stage(job, quote(records), quote(scan["seams"]), quote(summary))
    finalize_stage(job, quote(summary), keep_staging)
    return summary


@flow(name="tile-process", validate_parameters=False, log_prints=False)
def tile_process_flow(job: Job, keep_staging: bool = False) -> dict[str, Any]:
    """Tile an image, run a function on every tile, merge into global labels."""
    return run_pipeline(job, keep_staging)


@flow(name="merge-tile-labels", validate_parameters=False, log_prints=False)
def merge_flow(job: Job, keep_staging: bool = False) -> dict[str, Any]:
    """Merge per-tile labels someone already has into global labels."""
    return run_pipeline(job, keep_staging)

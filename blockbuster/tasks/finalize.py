"""The last stage: report, mark the output complete, drop the staging area.

One Prefect task (not one for the report and one for finalizing): each task run costs
tens of milliseconds of API calls, which a warm small run notices.
"""

from __future__ import annotations

import os
from typing import Any

from prefect import task

from ..core.staging import Staging
from .common import NO_CACHE, local_result_dir, stage_key
from .job import Job
from .report import publish_summary

__all__ = ["finalize_stage", "CACHED_STAGES"]

CACHED_STAGES = ("segment", "table")     # the stages whose results Prefect caches


@task(name="finalize", cache_policy=NO_CACHE, persist_result=False)
def finalize_stage(job: Job, summary: dict[str, Any], keep_staging: bool) -> None:
    """Publish the summary artifact, mark the output complete (its very last write), then
    drop the staging area and the cached stage results that describe it. (The caller
    waits for the reporter thread's calls once the flow has returned.)"""
    publish_summary(job, summary)
    job.out.mark_complete({"result_key": job.plan.result_key, **{k: summary[k] for k in (
        "run_key", "n_tiles", "labels_after_merge", "labels_before_merge", "dtype",
        "sequential_labels", "merge")}},
        executor=job.client().get_executor() if job.out.is_ngff else None)
    if not keep_staging:
        Staging(job.plan.staging_root).remove()
        _drop_cached_results(job)


def _drop_cached_results(job: Job) -> None:
    """Cached stage results name a staging generation that no longer exists: delete them
    from Prefect's local result storage rather than let them pile up."""
    try:
        base = local_result_dir()
    except Exception:  # pragma: no cover
        return
    for stage in CACHED_STAGES:
        key = stage_key(stage, job.run_key, job.generation)
        for path in (os.path.join(base, key), os.path.join(base, key + ".lock")):
            try:
                os.remove(path)
            except OSError:
                pass



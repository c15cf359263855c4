"""The last step of a run: the summary, the output marked complete, staging dropped.

Not a Prefect task: it is ~10 ms of bookkeeping in the flow's thread, and a task run
(state changes, events) would cost about as much again at the end of every run. Its
failure fails the flow run like any stage's.
"""

from __future__ import annotations

import os
from typing import Any

from blockbuster.io import Staging

from ._common import job_stage_key, local_result_dir
from ._job import Job
from ._report import publish_summary

__all__ = ["finalize_stage", "finish_output", "CACHED_STAGES"]

CACHED_STAGES = ("empty", "segment", "seams", "table")  # the stages whose results Prefect caches


def _executor(job: Job):
    """Where an NGFF output's pyramid levels are built (the run's cluster), else None."""
    return job.client().get_executor() if job.out.is_ngff else None


def finish_output(job: Job) -> None:
    """Everything of the output but its completion record (NGFF pyramid, every file on
    stable storage), while the run's pictures are still being drawn: the two overlap
    (:meth:`~blockbuster.io.OutputTarget.finish`)."""
    job.out.finish(executor=_executor(job))


def finalize_stage(job: Job, summary: dict[str, Any], keep_staging: bool) -> None:
    """Publish the summary artifact, mark the output complete (its very last write), then
    drop the staging area and the cached stage results that describe it. (The summary
    is sent by the run's reporter thread.)"""
    publish_summary(job, summary)
    if job.out.labels is not None:  # relabelled into memory: no store was written
        _drop(job, keep_staging)
        return
    job.out.mark_complete(
        {
            "result_key": job.plan.result_key,
            # what the labels were made from: a watcher redoes a replaced acquisition
            "input": job.plan.description.get("input"),
            **{
                k: summary[k]
                for k in (
                    "run_key",
                    "n_tiles",
                    "labels_after_merge",
                    "labels_before_merge",
                    "dtype",
                    "sequential_labels",
                    "merge",
                )
            },
        },
        executor=_executor(job),
    )
    _drop(job, keep_staging)


def _drop(job: Job, keep_staging: bool) -> None:
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
        key = job_stage_key(stage, job)
        if key is None:
            continue
        for path in (os.path.join(base, key), os.path.join(base, key + ".lock")):
            try:
                os.remove(path)
            except OSError:
                pass

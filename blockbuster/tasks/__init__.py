"""Prefect tasks, one per stage of the pipeline, thin wrappers over :mod:`blockbuster.worker`
and :mod:`blockbuster.cluster`; the run's reporter thread and artifacts. A task does its
stage and returns: what starts when is decided by the flows.
"""

from ._background import Reporter, wait_for_closed
from ._common import local_result_storage, prefect_client_context
from ._ephemeral import ensure_api
from ._finalize import finalize_stage
from ._job import Job
from ._progress import PROGRESS_KEY, ProgressArtifact
from ._relabel import relabel_stage
from ._report import (
    SUMMARY_KEY,
    TILES_KEY,
    publish_tiles_table,
)
from ._seams import merge_table_stage
from ._segment import segment_stage, start_segment

__all__ = [
    "Job",
    "PROGRESS_KEY",
    "ProgressArtifact",
    "Reporter",
    "SUMMARY_KEY",
    "TILES_KEY",
    "ensure_api",
    "finalize_stage",
    "local_result_storage",
    "merge_table_stage",
    "prefect_client_context",
    "publish_tiles_table",
    "relabel_stage",
    "segment_stage",
    "start_segment",
    "wait_for_closed",
]

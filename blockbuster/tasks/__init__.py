"""Prefect tasks, one per stage of the pipeline, thin wrappers over :mod:`blockbuster.worker`
and :mod:`blockbuster.cluster`; the run's reporter thread and artifacts. A task does its
stage and returns: what starts when is decided by the flows.
"""

from ._background import Reporter, wait_for_closed
from ._common import local_result_storage, prefect_client_context
from ._empty import empty_stage, start_empty, wants_empty_stage
from ._ephemeral import ensure_api, warm_up, without_heartbeats
from ._finalize import finalize_stage
from ._job import Job
from ._plan import plan_stage
from ._progress import PROGRESS_KEY, ProgressArtifact
from ._relabel import relabel_stage, start_relabel
from ._report import SUMMARY_KEY, TILES_KEY, publish_tiles_table
from ._seams import lut_stage, scan_stage, start_scan
from ._segment import segment_stage, start_first, start_segment, unfinished_tiles

__all__ = [
    "PROGRESS_KEY",
    "SUMMARY_KEY",
    "TILES_KEY",
    "Job",
    "ProgressArtifact",
    "Reporter",
    "empty_stage",
    "ensure_api",
    "finalize_stage",
    "local_result_storage",
    "lut_stage",
    "plan_stage",
    "prefect_client_context",
    "publish_tiles_table",
    "relabel_stage",
    "scan_stage",
    "segment_stage",
    "start_empty",
    "start_first",
    "start_relabel",
    "start_scan",
    "start_segment",
    "unfinished_tiles",
    "wait_for_closed",
    "wants_empty_stage",
    "warm_up",
    "without_heartbeats",
]

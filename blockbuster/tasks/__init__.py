"""Prefect tasks, one per stage of the pipeline, thin wrappers over :mod:`blockbuster.worker`
and :mod:`blockbuster.cluster`; the run's reporter thread and artifacts. A task does its
stage and returns: what starts when is decided by the flows.
"""

from ._background import Reporter, reports_are_seen, wait_for_closed
from ._common import local_result_storage
from ._empty import empty_stage, start_empty, wants_empty_stage
from ._finalize import finalize_stage, finish_output
from ._job import Job
from ._local_server import (
    local_server,
    start_local_server,
    stop_local_server,
    use_local_server,
)
from ._pictures import (
    PREVIEW_FILE,
    PREVIEW_KEY,
    TILE_MAP_FILE,
    TILE_MAP_KEY,
    PicturesWork,
    make_pictures,
    preview_canvas,
    start_pictures,
    start_pictures_early,
)
from ._plan import plan_stage
from ._prefect_compat import (
    ensure_api,
    ephemeral_run_settings,
    prefect_client_context,
    warm_up,
)
from ._progress import PROGRESS_KEY, ProgressArtifact
from ._relabel import relabel_stage, start_relabel
from ._report import (
    SUMMARY_KEY,
    TABLE_ROWS,
    TILES_CSV,
    TILES_KEY,
    publish_tiles_table,
    tiles_csv,
)
from ._seams import lut_stage, scan_stage, start_scan
from ._segment import segment_stage, start_first, start_segment, unfinished_tiles

__all__ = [
    "PREVIEW_FILE",
    "PREVIEW_KEY",
    "PROGRESS_KEY",
    "SUMMARY_KEY",
    "TABLE_ROWS",
    "TILES_CSV",
    "TILES_KEY",
    "TILE_MAP_FILE",
    "TILE_MAP_KEY",
    "Job",
    "ProgressArtifact",
    "Reporter",
    "empty_stage",
    "ensure_api",
    "finalize_stage",
    "finish_output",
    "local_result_storage",
    "local_server",
    "lut_stage",
    "make_pictures",
    "start_pictures",
    "start_pictures_early",
    "preview_canvas",
    "PicturesWork",
    "plan_stage",
    "prefect_client_context",
    "publish_tiles_table",
    "reports_are_seen",
    "relabel_stage",
    "scan_stage",
    "segment_stage",
    "start_empty",
    "start_first",
    "start_local_server",
    "start_relabel",
    "start_scan",
    "start_segment",
    "stop_local_server",
    "unfinished_tiles",
    "use_local_server",
    "wait_for_closed",
    "wants_empty_stage",
    "warm_up",
    "ephemeral_run_settings",
    "tiles_csv",
]

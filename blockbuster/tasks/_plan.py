"""The plan stage: the tile grid and what the run will do, as the run graph's first task.

The plan itself is computed (and every parameter checked) before the flow starts, so that
a bad parameter is refused before anything is written; this task puts it in the run's
record: the grid, the tile and unit shapes, the merge, the staging, and how many tiles
are already finished (resume).
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger

from ._common import stage_task, tiles_word
from ._job import Job

__all__ = ["plan_stage"]


@stage_task("plan", cache=None)
def plan_stage(job: Job, n_finished: int) -> dict[str, Any]:
    """Describe the run's plan (``n_finished``: tiles already staged, resumed)."""
    plan = job.plan
    g = plan.grid
    desc = {
        "run_key": plan.run_key,
        "image_shape": list(g.shape),
        "grid_shape": list(g.grid_shape),
        "tile_shape": list(g.tile_shape),
        "overlap": list(g.overlap),
        "merge": plan.merge,
        "n_tiles": g.n_tiles,
        "n_finished": n_finished,
        "skip_empty": bool(plan.skip_empty),
        "staging": plan.staging_root,
    }
    get_run_logger().info(
        "plan: %d %s of %s over an image of %s (overlap %s, %s merge); %d already finished",
        g.n_tiles,
        tiles_word(plan),
        list(g.tile_shape),
        list(g.shape),
        list(g.overlap),
        plan.merge,
        n_finished,
    )
    return desc

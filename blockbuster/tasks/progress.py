"""Progress of a stage: a tqdm bar for people at a terminal or notebook, and a Prefect
progress artifact for people at the Prefect UI.

The artifact (key ``blockbuster-progress``) counts tiles over the segment and relabel
stages together (segment is the first 0-90 %, relabel the rest) and is updated at most
every 2 s (each update is an API call of ~20 ms in the flow's thread), so it costs
nothing measurable; ``close`` pushes the final count.
"""

from __future__ import annotations

import logging
import time

__all__ = ["StageProgress", "PROGRESS_KEY"]

PROGRESS_KEY = "blockbuster-progress"
log = logging.getLogger("blockbuster")


class StageProgress:
    """Counts finished tiles of one stage; drives tqdm and the progress artifact."""

    INTERVAL = 2.0     # seconds between artifact updates

    def __init__(self, stage: str, total: int, *, bar: bool, artifact_id=None,
                 span: tuple[float, float] = (0.0, 100.0), done: int = 0):
        self.stage, self.total, self.done = stage, max(int(total), 0), int(done)
        self.artifact_id, self.span = artifact_id, span
        self._last = time.monotonic()
        self._bar = None
        if bar and self.total:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=self.total, initial=self.done, desc=stage, unit="tile",
                             dynamic_ncols=True, leave=True)

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        now = time.monotonic()
        if self.artifact_id is not None and now - self._last > self.INTERVAL:
            self._last = now
            self._push()

    def percent(self) -> float:
        lo, hi = self.span
        frac = self.done / self.total if self.total else 1.0
        return lo + (hi - lo) * min(frac, 1.0)

    def _push(self) -> None:
        try:
            from prefect.artifacts import update_progress_artifact
            update_progress_artifact(self.artifact_id, self.percent(),
                                     description=f"{self.stage}: {self.done}/{self.total} tiles")
        except Exception:  # pragma: no cover - reporting must never break a run
            log.debug("progress artifact update failed", exc_info=True)

    def close(self) -> None:
        if self.artifact_id is not None:
            self._push()
        if self._bar is not None:
            self._bar.close()

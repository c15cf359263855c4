"""Progress of a stage: a tqdm bar for people at a terminal or notebook, and a Prefect
progress artifact for people at the Prefect UI.

The artifact (key ``blockbuster-progress``) counts tiles over the segment and relabel
stages together (segment is the first 0-90 %, relabel the rest). It is created by its
first update, after 2 s of a run, updated at most every 2 s, and the end of the run
pushes 100 %. Creating and updating it are API calls (~10-40 ms each, and as much
again in the server), sent from the run's background :class:`~.background.Reporter`
thread, so no stage waits on them.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["StageProgress", "ProgressArtifact", "PROGRESS_KEY"]

PROGRESS_KEY = "blockbuster-progress"


class ProgressArtifact:
    """The run's progress artifact, sent from the run's reporter thread (in submission
    order). It is created by its first update, so a run shorter than the update
    interval makes one API call for it (its final 100 %), not three."""

    def __init__(self, reporter, run_key: str):
        self.reporter = reporter
        self.run_key = run_key
        self.id: Any = None  # the artifact's id, once created

    def update(self, percent: float, description: str) -> None:
        """Queue an update (the latest one submitted is what the UI ends up showing)."""
        self.reporter.submit(self._send, percent, description)

    def _send(self, percent: float, description: str) -> None:
        if self.id is None:
            from prefect.artifacts import create_progress_artifact

            self.id = create_progress_artifact(
                percent, key=PROGRESS_KEY, description=f"run {self.run_key}: {description}"
            )
        else:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(
                self.id, percent, description=f"run {self.run_key}: {description}"
            )


class StageProgress:
    """Counts finished tiles of one stage; drives tqdm and the progress artifact."""

    INTERVAL = 2.0  # seconds between artifact updates

    def __init__(
        self,
        stage: str,
        total: int,
        *,
        bar: bool,
        artifact: ProgressArtifact | None = None,
        span: tuple[float, float] = (0.0, 100.0),
        done: int = 0,
    ):
        self.stage, self.total, self.done = stage, max(int(total), 0), int(done)
        self.artifact, self.span = artifact, span
        self._last = time.monotonic()
        self._bar = None
        if bar and self.total:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.total,
                initial=self.done,
                desc=stage,
                unit="tile",
                dynamic_ncols=True,
                leave=True,
            )

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        now = time.monotonic()
        if self.artifact is not None and now - self._last > self.INTERVAL:
            self._last = now
            self._push()

    def percent(self) -> float:
        lo, hi = self.span
        frac = self.done / self.total if self.total else 1.0
        return lo + (hi - lo) * min(frac, 1.0)

    def _push(self) -> None:
        if self.artifact is not None:
            self.artifact.update(self.percent(), f"{self.stage}: {self.done}/{self.total} tiles")

    def close(self) -> None:
        """Push the final count: always for the last stage of a run (its span ends at
        100 %), else only if the artifact has not been updated for ``INTERVAL`` (a short
        stage's end is soon followed by the next stage's updates)."""
        if self.artifact is not None and (
            self.span[1] >= 100.0 or time.monotonic() - self._last > self.INTERVAL
        ):
            self._push()
        if self._bar is not None:
            self._bar.close()

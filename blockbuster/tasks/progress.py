"""Progress of a stage: a tqdm bar for people at a terminal or notebook, and a Prefect
progress artifact for people at the Prefect UI.

The artifact (key ``blockbuster-progress``) counts tiles over the segment and relabel
stages together (segment is the first 0-90 %, relabel the rest) and is updated at most
every 2 s; ``close`` pushes the final count. Creating and updating it are API calls
(~10-40 ms each), sent from the run's background :class:`~.background.Reporter`
thread, so no stage waits on them.
"""

from __future__ import annotations

import time

__all__ = ["StageProgress", "ProgressArtifact", "PROGRESS_KEY"]

PROGRESS_KEY = "blockbuster-progress"


class ProgressArtifact:
    """The run's progress artifact, created and updated from the run's reporter thread
    (in submission order, so an update never overtakes the creation)."""

    def __init__(self, reporter, description: str):
        self.reporter = reporter
        self.id = None
        reporter.submit(self._create, description)

    def _create(self, description: str) -> None:
        from prefect.artifacts import create_progress_artifact
        self.id = create_progress_artifact(0.0, key=PROGRESS_KEY, description=description)

    def update(self, percent: float, description: str) -> None:
        """Queue an update (the latest one submitted is what the UI ends up showing)."""
        self.reporter.submit(self._update, percent, description)

    def _update(self, percent: float, description: str) -> None:
        if self.id is not None:
            from prefect.artifacts import update_progress_artifact
            update_progress_artifact(self.id, percent, description=description)


class StageProgress:
    """Counts finished tiles of one stage; drives tqdm and the progress artifact."""

    INTERVAL = 2.0     # seconds between artifact updates

    def __init__(self, stage: str, total: int, *, bar: bool,
                 artifact: ProgressArtifact | None = None,
                 span: tuple[float, float] = (0.0, 100.0), done: int = 0):
        self.stage, self.total, self.done = stage, max(int(total), 0), int(done)
        self.artifact, self.span = artifact, span
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
        if self.artifact is not None and now - self._last > self.INTERVAL:
            self._last = now
            self._push()

    def percent(self) -> float:
        lo, hi = self.span
        frac = self.done / self.total if self.total else 1.0
        return lo + (hi - lo) * min(frac, 1.0)

    def _push(self) -> None:
        self.artifact.update(self.percent(), f"{self.stage}: {self.done}/{self.total} tiles")

    def close(self) -> None:
        if self.artifact is not None:
            self._push()
        if self._bar is not None:
            self._bar.close()

"""The job handed from stage to stage: a small description plus live objects.

Prefect records a flow's and a task's parameters in its database (JSON) and may hash
them for cache keys. Pixel arrays, user functions and Dask clients must never go
through that, so they travel as private attributes of a pydantic model whose public
fields are short, human-readable descriptions (what the Prefect UI shows).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, PrivateAttr

if TYPE_CHECKING:
    from blockbuster.core import TileRecords

__all__ = ["Job"]


class Job(BaseModel):
    """What a run works on, as shown in the Prefect UI, with the live objects attached."""

    model_config = ConfigDict(frozen=False)

    run_key: str
    image: str
    fn: str
    output: str
    staging: str
    tiles: int
    merge: str
    generation: str = ""

    _plan: Any = PrivateAttr(default=None)
    _source: Any = PrivateAttr(default=None)
    _fn: Callable | None = PrivateAttr(default=None)
    _cluster: Any = PrivateAttr(default=None)
    _progress: bool = PrivateAttr(default=False)
    _output: Any = PrivateAttr(default=None)
    _timings: dict = PrivateAttr(default_factory=dict)
    _resources: dict | None = PrivateAttr(default=None)
    _details: dict = PrivateAttr(default_factory=dict)
    _started: dict = PrivateAttr(default_factory=dict)
    _reporter: Any = PrivateAttr(default=None)
    _reports_seen: bool = PrivateAttr(default=True)
    _progress_artifact: Any = PrivateAttr(default=None)
    _finished: Any = PrivateAttr(default=None)
    _preview: Any = PrivateAttr(default=False)
    _pictures_work: Any = PrivateAttr(default=None)
    _prepared_labels: Any = PrivateAttr(default=None)

    @classmethod
    def create(
        cls,
        *,
        plan,
        source,
        fn,
        cluster,
        output,
        progress: bool,
        fn_description: str,
        resources: dict | None = None,
        generation: str = "",
    ) -> Job:
        if generation:  # the workers' batches open the staging without reading it
            plan = dataclasses.replace(plan, staging_generation=generation)
        job = cls(
            run_key=plan.run_key,
            image=source.description,
            fn=fn_description,
            output=output.describe(),
            staging=plan.staging_root,
            tiles=plan.grid.n_tiles,
            merge=plan.merge,
            generation=generation,
        )
        job._plan, job._source, job._fn = plan, source, fn
        job._cluster, job._output, job._progress = cluster, output, progress
        job._resources = resources
        # asked here, in the calling thread, inside the settings that point at
        # `blockbuster up`'s server when it runs (the flow's threads may not see them)
        from ._background import reports_are_seen

        job._reports_seen = reports_are_seen()
        return job

    def finished_records(self) -> TileRecords:
        """Records of the tiles already staged by an earlier run (resume), read from the
        staging once per run: a :class:`~blockbuster.core.TileRecords` whose ``filled``
        rows are those tiles."""
        if self._finished is None:
            from blockbuster.core import TileRecords
            from blockbuster.io import Staging

            staging = Staging(self._plan.staging_root, durable=self._plan.durable)
            found = TileRecords(self._plan.grid)
            batch = []
            for n in staging.finished_tiles():
                rec = staging.read_record(n)
                rec["resumed"] = True
                batch.append(rec)
                if len(batch) == 4096:  # dicts are kept a batch at a time, not all
                    found.add_many(batch)
                    batch = []
            found.add_many(batch)
            self._finished = found
        return self._finished

    @property
    def plan(self):
        return self._plan

    @property
    def source(self):
        return self._source

    @property
    def tile_fn(self) -> Callable | None:
        """The tile function; None for the merge alone (merge_tile_labels)."""
        return self._fn

    @property
    def out(self):
        return self._output

    @property
    def progress(self) -> bool:
        return self._progress

    @property
    def reporter(self):
        """The run's background thread for reporting calls (:mod:`.background`); it
        publishes nothing when nobody can see the run's reports (Prefect's temporary
        server: :func:`~._background.reports_are_seen`)."""
        if self._reporter is None:
            from ._background import Reporter

            self._reporter = Reporter(publish=self._reports_seen)
        return self._reporter

    @property
    def prepared_labels(self):
        """The array of labels relabelled into memory, being made ahead (a
        ``concurrent.futures.Future``; ``tasks/_relabel.py``), or None."""
        return self._prepared_labels

    @prepared_labels.setter
    def prepared_labels(self, value) -> None:
        self._prepared_labels = value

    @property
    def progress_artifact(self):
        """The run's :class:`~.progress.ProgressArtifact`, or ``None`` before the flow
        created it."""
        return self._progress_artifact

    @progress_artifact.setter
    def progress_artifact(self, value) -> None:
        self._progress_artifact = value

    @property
    def timings(self) -> dict:
        return self._timings

    @property
    def resources(self) -> dict | None:
        return self._resources

    @property
    def preview(self) -> Any:
        """The run's :class:`~blockbuster.core.PreviewCanvas` (None: no pictures; False:
        not decided yet; tasks/_pictures.py's ``preview_canvas`` decides)."""
        return self._preview

    @preview.setter
    def preview(self, canvas: Any) -> None:
        self._preview = canvas

    @property
    def pictures_work(self) -> Any:
        """The run's pictures in the making (tasks/_pictures.py's ``PicturesWork``)."""
        return self._pictures_work

    @pictures_work.setter
    def pictures_work(self, work: Any) -> None:
        self._pictures_work = work

    @property
    def details(self) -> dict:
        """Per-tile and per-seam lists of the run (``tiles``, ``seams``), kept off the
        flow's return value: Prefect walks every object of a flow's result."""
        return self._details

    def drop_corrupt_records(self) -> list[int]:
        """Check the staging (:meth:`~blockbuster.io.Staging.verify`): records failing
        their checksums are dropped (a warning names each tile), the staging gets a new
        generation, and this job follows it, so the stages run again recompute exactly
        the dropped tiles. Work started ahead is cancelled first."""
        from blockbuster.io import Staging

        self.cancel_started()
        staging = Staging(self._plan.staging_root, durable=self._plan.durable)
        dropped = staging.verify()
        self.generation = staging.generation or ""
        self._finished = None
        return dropped

    def start_ahead(self, stage: str, work) -> None:
        """Keep ``work`` (a stage's batches, submitted early) for that stage's task to
        adopt: the segment stage's before the flow run starts, the others while the
        task run of the previous stage ends and the next one starts."""
        self._started[stage] = work

    def take_started(self, stage: str):
        """The work started ahead for ``stage``, or None; the caller owns it now."""
        return self._started.pop(stage, None)

    def release(self) -> None:
        """Drop what the run held per tile (records, seams, the preview canvas, work
        started ahead) once the call has built its summary. A context Prefect keeps for
        the rest of the process (a service started from the flow's context) may keep this
        Job, and these grow with the tiles (~150 MB at a million tiles); the caller's
        summary keeps its own references to what it returns."""
        self.cancel_started()
        self._details = {}
        self._finished = None
        self._preview = None
        self._pictures_work = None
        self._prepared_labels = None

    def cancel_started(self) -> None:
        """Cancel work started ahead that no stage adopted (the flow failed first)."""
        for work in self._started.values():
            work.cancel()
        self._started.clear()

    def client(self):
        return self._cluster.client()

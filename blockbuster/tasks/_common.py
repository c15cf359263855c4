"""Shared bits of the stage tasks: cache policies and where cached results live."""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import NO_CACHE, CachePolicy

__all__ = [
    "fan_out",
    "stage_task",
    "STAGE_RETRIES",
    "tiles_word",
    "stage_cache_policy",
    "stage_key",
    "NO_CACHE",
    "local_result_storage",
    "local_result_dir",
]


def fan_out(
    job,
    fn,
    tiles: list[int],
    args_for,
    *,
    name: str,
    info: dict[str, Any] | None = None,
    started: float | None = None,
    max_batch: int | None = None,
    min_batches_per_thread: int | None = None,
):
    """Submit ``fn`` over ``tiles`` in batches sized for the job's cluster, at most two
    batches a worker thread (plus two) in flight: a :class:`~blockbuster.cluster.StageWork`.
    ``args_for(batch)`` returns the function that builds a batch's arguments;
    ``max_batch`` and ``min_batches_per_thread`` go to
    :func:`~blockbuster.cluster.split_batches`."""
    from blockbuster.cluster import StageWork, client_threads, split_batches

    client = job.client()
    nthreads = client_threads(client)
    kw: dict[str, Any] = {"tile_voxels": job.plan.grid.tile_voxels}
    if max_batch is not None:
        kw["max_batch"] = max_batch
    if min_batches_per_thread is not None:
        kw["min_batches_per_thread"] = min_batches_per_thread
    batches = split_batches(tiles, nthreads, **kw)
    return StageWork.submit(
        client,
        fn,
        batches,
        args_for,
        name=name,
        window=2 * nthreads + 2,
        info=info,
        started=started,
    )


def tiles_word(plan) -> str:
    """What a stage's log counts: ``"tiles"``, or merge units (core/units.py)."""
    if plan.unit_tile_shape is None:
        return "tiles"
    per = 1
    for t, u in zip(plan.unit_tile_shape, plan.grid.tile_shape):
        per *= -(-u // t)
    return f"merge units (of up to {per} tiles)"


def local_result_dir() -> str:
    """Prefect's local result directory (``PREFECT_LOCAL_STORAGE_PATH``), expanded."""
    import os

    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    return os.path.expanduser(str(PREFECT_LOCAL_STORAGE_PATH.value()))


def local_result_storage():
    """Where the cached stage results go: Prefect's local result directory, always.

    A cached stage result only describes a staging directory on this machine's
    filesystem, so it belongs next to it, not in a remote default storage; naming it
    explicitly also spares two API requests per run (Prefect otherwise asks the server
    for a default result storage for the flow and again for its first cached task).
    A path, because a flow accepts only saved storage blocks or paths.
    """
    from pathlib import Path

    return Path(local_result_dir())


def stage_key(stage: str, run_key: str, generation: str) -> str:
    """The cache key of a stage of a run over one staging generation."""
    return f"blockbuster-{stage}-{run_key}-{generation}"


def job_stage_key(stage: str, job) -> str | None:
    """The cache key of ``stage`` of ``job``'s run (None: not cached). The merge table
    depends on the label numbering too (``sequential_labels``), which the run key leaves
    out: its key is the result key.

    A run whose staging is not durable (no ``write_to`` and no ``staging=``: both are
    temporary, removed when the call ends) is not cached: no later run can resume from
    it, and persisting each stage's result cost ~10 ms of a 16-tile call's ~0.35 s.
    """
    generation = getattr(job, "generation", None) if job is not None else None
    if not generation or not job.plan.durable:
        return None
    run = job.plan.result_key if stage == "table" else job.run_key
    return stage_key(stage, run, generation)


def _stage_key(stage: str):
    def key(context, parameters: dict[str, Any]) -> str | None:
        return job_stage_key(stage, parameters.get("job"))

    return key


def stage_cache_policy(stage: str) -> CachePolicy:
    """Cache a stage by run key and staging generation, never by hashing pixels.

    The generation is a random id written when a staging area is created: a cached
    stage result is only ever reused together with the very staging it describes.
    """
    return CachePolicy.from_cache_key_fn(_stage_key(stage))


STAGE_RETRIES = 2  # Prefect-level retries of a stage task run (each resumes per tile)


def _transient(task, task_run, state) -> bool:
    """Retry a stage only for failures that a second try may not meet again (a lost
    connection to the scheduler, a worker that died, a busy API): never for
    blockbuster's own errors (bad input, a tile function's bad output), which would
    fail the same way again."""
    from blockbuster.errors import BlockbusterError

    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:  # pragma: no cover - a result that cannot be read
            return True
    return not isinstance(exc, (BlockbusterError, KeyboardInterrupt))


def stage_task(name: str, *, cache: str | None, persist: bool = True):
    """The Prefect task decorator of a pipeline stage: named as in the design, cached by
    run key and staging generation (``cache`` names the stage; None: not cached),
    retried :data:`STAGE_RETRIES` times on transient failures. A retried stage resumes
    per tile (finished tiles are staged), so a retry costs only what was unfinished."""
    from prefect import task

    return task(
        name=name,
        cache_policy=stage_cache_policy(cache) if cache else NO_CACHE,
        persist_result=persist if cache else False,
        # a cached result is read back from its file when a later run needs it; kept in
        # Prefect's in-memory LRU as well, it would hold every stage's per-tile data
        # (the scan's label pairs, the merge table) as long as the process lives
        cache_result_in_memory=False,
        retries=STAGE_RETRIES,
        retry_delay_seconds=1,
        retry_condition_fn=_transient,
    )

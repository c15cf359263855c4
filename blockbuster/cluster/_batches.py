"""Fanning batches of tiles out to a Dask cluster from the driver.

Prefect task runs cost ~200 ms each on a Dask task runner (see docs/orchestration.md),
so a stage is one Prefect task in the driver that submits plain functions, one per
batch of tiles, straight to the Dask client. A bounded number of batches is in flight at
once, so tile inputs computed by the cluster (dask / NumPy images) never pile up in
worker memory, and a failure stops the stage quickly: the remaining batches are
cancelled and the original error is raised.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["split_batches", "BatchRun", "LocalBatchRun", "StageWork", "slots"]

log = logging.getLogger("blockbuster")


#: Voxels a batch may hold before ``max_batch`` tiles limits it: small tiles go in
#: bigger batches, so that a batch's fixed cost (a Dask task: ~2-3 ms of the scheduler's
#: and client's CPU, which on a small machine competes with the workers) stays small
#: next to its work.
BATCH_VOXELS = 1 << 22


def split_batches(
    tiles: Sequence[int],
    n_threads: int,
    max_batch: int = 32,
    min_batches_per_thread: int = 4,
    tile_voxels: int | None = None,
) -> list[list[int]]:
    """Split tile numbers into contiguous batches.

    Enough batches to keep every thread busy with some slack for uneven tiles (at least
    ``min_batches_per_thread`` per thread when there are that many tiles), and none
    larger than ``max_batch`` tiles, so per-batch overhead is amortised while progress
    and retries stay fine-grained. With ``tile_voxels`` (the voxels of one tile), a
    batch may hold more than ``max_batch`` tiles when they are small, up to
    :data:`BATCH_VOXELS` voxels.

    Examples
    --------
    >>> [len(b) for b in split_batches(list(range(10)), n_threads=2)]
    [2, 2, 1, 1, 1, 1, 1, 1]
    >>> len(split_batches(list(range(1024)), n_threads=2))
    32
    """
    tiles = list(tiles)
    if not tiles:
        return []
    if tile_voxels:
        max_batch = max(max_batch, BATCH_VOXELS // max(1, int(tile_voxels)))
    n_batches = max(
        min(len(tiles), n_threads * min_batches_per_thread), math.ceil(len(tiles) / max_batch)
    )
    size, extra = divmod(len(tiles), n_batches)
    out, i = [], 0
    for b in range(n_batches):
        k = size + (1 if b < extra else 0)
        if k:
            out.append(tiles[i : i + k])
        i += k
    return out


def slots(client, resources: dict | None = None) -> int:
    """Threads that can run a batch asking for ``resources`` (all threads without),
    counted now: workers join and leave."""
    from ._gpus import workers_info

    ws = list(workers_info(client).values())
    if resources:
        ws = [
            w
            for w in ws
            if all((w.get("resources") or {}).get(k, 0) >= v for k, v in resources.items())
        ]
    return max(1, sum(int(w.get("nthreads", 1)) for w in ws))


class BatchRun:
    """Batches of tiles on the cluster: ``func(*args_of[i]())`` for every i, at most
    ``window`` in flight.

    ``window`` may be a function of nothing: it is asked again, at most every
    ``recheck_s`` seconds, as batches finish, so the batches in flight follow the
    workers as they join and leave (a cluster started by the user, e.g. on SLURM, where
    one of eight GPU workers is up when the run starts).

    Creating one submits the first window at once (``args_of[i]`` is called only when
    batch i is submitted, so inputs that are themselves cluster computations start
    late); the next batch is submitted as each one finishes (from Dask's callback
    thread), whether or not :meth:`gather` is waiting yet: a stage's batches started
    ahead of its Prefect task run keep the workers busy while the flow run starts (a
    warm 16-tile call left both workers idle ~70 ms waiting for it). A batch counts as
    running until its future is done: :meth:`gather` submits the next itself when the
    callback thread comes late, and submits again a batch whose inputs the callback
    thread could not make (it stays pending; a second failure is raised).
    :meth:`gather` returns the results in order. Every stage uses this split to start
    its batches before its Prefect task run (the segment stage even before Prefect's
    temporary server is up), then gathers them inside the task (docs/orchestration.md).
    """

    def __init__(
        self,
        client,
        func: Callable,
        args_of: Sequence[Callable[[], tuple]],
        *,
        name: str,
        window: int | Callable[[], int],
        resources: dict | None = None,
        recheck_s: float = 1.0,
    ):
        from distributed import as_completed

        self.client, self.func, self.args_of = client, func, list(args_of)
        self._window_of = window if callable(window) else None
        self.window = max(1, int(window() if callable(window) else window))
        self.recheck_s = recheck_s
        self._checked = time.monotonic()
        self.resources = resources
        self.results: list[Any] = [None] * len(self.args_of)
        self._tag = f"{name}-{uuid.uuid4().hex[:8]}"
        self._pending = deque(range(len(self.args_of)))  # not submitted yet
        self._inflight: dict[str, tuple[int, Any]] = {}  # submitted, not gathered
        self._lock = threading.RLock()  # the gathering thread and Dask's callback thread
        self._ac = as_completed(loop=client.loop)
        try:
            self._top_up()
        except BaseException:
            self.cancel()
            raise

    def __len__(self) -> int:
        return len(self.args_of)

    def _submit_next(self) -> bool:
        if not self._pending:
            return False
        i = self._pending.popleft()
        try:
            fut = self.client.submit(
                self.func,
                *self.args_of[i](),
                key=f"{self._tag}-{i}",
                pure=False,
                resources=self.resources,
            )
        except BaseException:
            self._pending.appendleft(i)  # still to do: gather submits it again
            raise
        self._inflight[fut.key] = (i, fut)
        self._ac.add(fut)
        fut.add_done_callback(self._finished)
        return True

    def _finished(self, fut) -> None:
        """A batch ended (Dask's callback thread): the next one starts now."""
        with self._lock:
            try:
                self._top_up()
            except Exception:  # the batch stays pending: gather submits it again
                log.debug("submitting the next batch failed", exc_info=True)

    def _top_up(self) -> None:
        """Submit batches until ``window`` are running (asking ``window`` again when
        it is a function and ``recheck_s`` has passed)."""
        with self._lock:
            if self._window_of is not None and time.monotonic() - self._checked >= self.recheck_s:
                self._checked = time.monotonic()
                try:
                    self.window = max(1, int(self._window_of()))
                except Exception:  # pragma: no cover - scheduler busy or gone: keep the last
                    pass
            while self._running() < self.window and self._submit_next():
                pass

    def _running(self) -> int:
        """Batches submitted and not done: a done one no longer counts, whether or not
        its callback has run or ``gather`` has taken it (Dask's callback thread may come
        late)."""
        return sum(not f.done() for _, f in self._inflight.values())

    def gather(self, on_done: Callable[[int, Any], None] | None = None) -> list[Any]:
        """Wait for every batch (submitting the rest); ``on_done(i, result)`` as each ends."""
        try:
            while True:
                for fut in self._ac:
                    with self._lock:
                        i, _ = self._inflight.pop(fut.key)
                    self.results[i] = fut.result()
                    fut.release()
                    if on_done is not None:
                        on_done(i, self.results[i])
                    self._top_up()
                with self._lock:
                    if not self._pending and not self._inflight:
                        break
                    # batches the callback thread submitted after the loop saw none left,
                    # or could not submit: gathered (or submitted, raising if that fails
                    # again) here
                    self._top_up()
        except BaseException:
            self.cancel()
            raise
        return self.results

    def cancel(self) -> None:
        """Cancel what is in flight and submit nothing more."""
        with self._lock:
            self._pending.clear()
            futs = [f for _, f in self._inflight.values()]
            self._inflight.clear()
        if futs:
            try:
                self.client.cancel(futs, force=True)
            except Exception:  # pragma: no cover - cluster already gone
                pass
        self._ac.clear()


@dataclass
class StageWork:
    """A stage's batches once submitted, ahead of the Prefect task run that gathers
    them (docs/orchestration.md), with what that task needs to know of them (``info``).

    ``started`` is when the stage's work began: the stage's time is counted from it.
    """

    batches: list[list[int]]
    run: BatchRun | LocalBatchRun | None
    info: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def submit(
        cls,
        client,
        func: Callable,
        batches: list[list[int]],
        args_for: Callable[[list[int]], Callable[[], tuple]],
        *,
        name: str,
        window: int | Callable[[], int],
        resources: dict | None = None,
        info: dict[str, Any] | None = None,
        started: float | None = None,
    ) -> StageWork:
        """Submit ``func(*args_for(batch)())`` for each batch (the first ``window`` now)."""
        run = (
            BatchRun(
                client,
                func,
                [args_for(b) for b in batches],
                name=name,
                window=window,
                resources=resources,
            )
            if batches
            else None
        )
        return cls(batches, run, info or {}, time.perf_counter() if started is None else started)

    @classmethod
    def here(
        cls,
        func: Callable,
        batches: list[list[int]],
        args_for: Callable[[list[int]], Callable[[], tuple]],
        *,
        name: str,
        threads: int,
        info: dict[str, Any] | None = None,
        started: float | None = None,
    ) -> StageWork:
        """Run ``func(*args_for(batch)())`` for each batch in ``threads`` threads of this
        process, starting now: for work whose result belongs in this process (the
        relabel of a call that returns its labels as an array and writes no store).

        Examples
        --------
        >>> work = StageWork.here(sum, [[1, 2], [3]], lambda b: lambda: (b,),
        ...                       name="example", threads=2)
        >>> work.gather(), work.n_tiles
        ([3, 3], 3)
        """
        run = LocalBatchRun(func, [args_for(b) for b in batches], name=name, threads=threads)
        return cls(batches, run, info or {}, time.perf_counter() if started is None else started)

    @property
    def n_tiles(self) -> int:
        return sum(len(b) for b in self.batches)

    def gather(self, on_done: Callable[[int, Any], None] | None = None) -> list[Any]:
        """Every batch's result, in order (see :meth:`BatchRun.gather`)."""
        return self.run.gather(on_done) if self.run is not None else []

    def cancel(self) -> None:
        if self.run is not None:
            self.run.cancel()


class LocalBatchRun:
    """Batches run in threads of this process, with :class:`BatchRun`'s ``gather`` and
    ``cancel``: all are queued at once (a thread pool holds no tile inputs before it runs
    a batch); the first error cancels the batches not started and is raised.

    Examples
    --------
    >>> run = LocalBatchRun(pow, [lambda: (2, 3), lambda: (3, 2)], name="pow", threads=2)
    >>> run.gather()
    [8, 9]
    """

    def __init__(
        self,
        func: Callable,
        args_of: Sequence[Callable[[], tuple]],
        *,
        name: str,
        threads: int,
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix=f"blockbuster-{name}")

        def run(args: Callable[[], tuple]) -> Any:
            return func(*args())

        self.futures = [pool.submit(run, a) for a in args_of]
        pool.shutdown(wait=False)

    def gather(self, on_done: Callable[[int, Any], None] | None = None) -> list[Any]:
        """Every batch's result, in order; ``on_done(i, result)`` as each one ends."""
        from concurrent.futures import as_completed

        index = {f: i for i, f in enumerate(self.futures)}
        try:
            for f in as_completed(self.futures):
                r = f.result()
                if on_done is not None:
                    on_done(index[f], r)
        except BaseException:
            self.cancel()
            raise
        return [f.result() for f in self.futures]

    def cancel(self) -> None:
        for f in self.futures:
            f.cancel()

"""Fanning batches of tiles out to a Dask cluster from the driver.

Prefect task runs cost ~200 ms each on a Dask task runner (see docs/orchestration.md),
so a stage is one Prefect task in the driver that submits plain functions, one per
batch of tiles, straight to the Dask client. A bounded number of batches is in flight at
once, so tile inputs computed by the cluster (dask / NumPy images) never pile up in
worker memory, and a failure stops the stage quickly: the remaining batches are
cancelled and the original error is raised.
"""

from __future__ import annotations

import math
import uuid
from typing import Any, Callable, Sequence

__all__ = ["split_batches", "run_batches"]


def split_batches(tiles: Sequence[int], n_threads: int, max_batch: int = 32,
                  min_batches_per_thread: int = 4) -> list[list[int]]:
    """Split tile numbers into contiguous batches.

    Enough batches to keep every thread busy with some slack for uneven tiles (at least
    ``min_batches_per_thread`` per thread when there are that many tiles), and none
    larger than ``max_batch`` tiles, so per-batch overhead is amortised while progress
    and retries stay fine-grained.

    Examples
    --------
    >>> [len(b) for b in split_batches(list(range(10)), n_threads=2)]
    [2, 2, 2, 2, 1, 1]
    >>> len(split_batches(list(range(1024)), n_threads=2))
    32
    """
    tiles = list(tiles)
    if not tiles:
        return []
    n_batches = max(min(len(tiles), n_threads * min_batches_per_thread),
                    math.ceil(len(tiles) / max_batch))
    size, extra = divmod(len(tiles), n_batches)
    out, i = [], 0
    for b in range(n_batches):
        k = size + (1 if b < extra else 0)
        if k:
            out.append(tiles[i:i + k])
        i += k
    return out


def run_batches(client, func: Callable, args_of: Sequence[Callable[[], tuple]], *,
                name: str, window: int, on_done: Callable[[int, Any], None] | None = None,
                resources: dict | None = None) -> list[Any]:
    """Run ``func(*args_of[i]())`` for every i on the cluster; return results in order.

    ``args_of[i]`` is called only when batch i is submitted (so inputs that are
    themselves cluster computations start late). At most ``window`` batches are in
    flight. ``on_done(i, result)`` is called in the driver as batches finish.
    """
    from distributed import as_completed

    n = len(args_of)
    results: list[Any] = [None] * n
    if n == 0:
        return results
    tag = f"{name}-{uuid.uuid4().hex[:8]}"
    pending = iter(range(n))
    inflight: dict[str, tuple[int, Any]] = {}
    ac = as_completed()

    def submit_next() -> bool:
        i = next(pending, None)
        if i is None:
            return False
        fut = client.submit(func, *args_of[i](), key=f"{tag}-{i}", pure=False,
                            resources=resources)
        inflight[fut.key] = (i, fut)
        ac.add(fut)
        return True

    try:
        for _ in range(max(1, window)):
            if not submit_next():
                break
        for fut in ac:
            i, _ = inflight.pop(fut.key)
            results[i] = fut.result()
            fut.release()
            if on_done is not None:
                on_done(i, results[i])
            submit_next()
    except BaseException:
        futs = [f for _, f in inflight.values()]
        if futs:
            try:
                client.cancel(futs, force=True)
            except Exception:  # pragma: no cover - cluster already gone
                pass
        ac.clear()
        raise
    return results

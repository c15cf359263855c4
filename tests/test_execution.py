"""How a stage's tiles are split into batches (:func:`blockbuster.cluster.split_batches`)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from blockbuster.cluster import BATCH_VOXELS, split_batches


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(0, 5000),
    threads=st.integers(1, 16),
    max_batch=st.integers(1, 64),
    tile_voxels=st.one_of(st.none(), st.integers(1, 1 << 24)),
)
def test_batches_partition_the_tiles(n, threads, max_batch, tile_voxels):
    tiles = [3 * i + 1 for i in range(n)]  # any increasing tile numbers
    batches = split_batches(tiles, threads, max_batch=max_batch, tile_voxels=tile_voxels)
    assert [t for b in batches for t in b] == tiles  # contiguous, in order, each once
    assert all(batches)
    cap = max_batch if not tile_voxels else max(max_batch, BATCH_VOXELS // tile_voxels)
    assert max((len(b) for b in batches), default=0) <= cap
    # every thread gets work, with slack, when there are enough tiles
    assert len(batches) >= min(n, 4 * threads)
    sizes = [len(b) for b in batches]
    assert not sizes or max(sizes) - min(sizes) <= 1  # even


def test_small_tiles_share_batches():
    tiles = list(range(4096))
    # 128 x 128 tiles: 256 per batch (BATCH_VOXELS voxels), not 32
    assert len(split_batches(tiles, 2, tile_voxels=128 * 128)) == 16
    assert len(split_batches(tiles, 2)) == 128
    # large tiles keep the tile cap
    assert len(split_batches(tiles, 2, tile_voxels=1024 * 1024)) == 128


def _mark_batch(folder: str, i: int) -> int:
    """A batch that leaves a file named after itself (seen from the driver)."""
    import os

    open(os.path.join(folder, str(i)), "w").close()
    return i


def test_batches_beyond_the_window_start_before_anyone_gathers(client, tmp_path):
    """A stage's batches are started ahead of its Prefect task run, which gathers them
    only once the flow run has begun: every batch must start as one before it ends, not
    when ``gather`` is called (a warm 16-tile call left both workers idle ~70 ms waiting
    for the flow run to reach the segment stage's task run)."""
    import os
    import time

    from blockbuster.cluster import StageWork

    folder = str(tmp_path)
    work = StageWork.submit(
        client,
        _mark_batch,
        [[i] for i in range(6)],
        lambda b: lambda: (folder, b[0]),
        name="ahead",
        window=1,
    )
    deadline = time.monotonic() + 60
    while len(os.listdir(folder)) < 6 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(os.listdir(folder), key=int) == [str(i) for i in range(6)]
    assert work.gather() == list(range(6))  # in order


def _same(i: int) -> int:
    return i


def _wait_for(cond, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _callbacks_idle(client) -> None:
    """Return once Dask's done-callback thread has run everything queued before now."""
    import threading

    seen = threading.Event()
    client.submit(_same, 0, pure=False).add_done_callback(lambda f: seen.set())
    assert seen.wait(30)


def test_gather_returns_every_batch_when_the_callback_thread_is_late(client):
    """Dask runs a future's done callbacks in a thread of its own, which may come late
    (busy, or behind other callbacks): ``gather`` must neither end with batches never
    submitted (it saw its last future done before the callback thread could submit the
    next) nor count a finished batch as running because its callback has not run yet.
    Each callback here waits 0.3 s before it does its work."""
    import time

    from blockbuster.cluster._batches import BatchRun  # the class StageWork.submit runs

    ran = []

    class LateCallbacks(BatchRun):
        def _finished(self, fut):
            time.sleep(0.3)
            super()._finished(fut)
            ran.append(fut.key)

    run = LateCallbacks(client, _same, [lambda i=i: (i,) for i in range(5)], name="late", window=1)
    t0 = time.monotonic()
    assert run.gather() == list(range(5))
    # the gathering thread submitted each next batch itself, without waiting for the
    # late callbacks (4 of them would take 1.2 s)
    assert time.monotonic() - t0 < 1.2
    _wait_for(lambda: len(ran) == 5)  # Dask's one callback thread is free for others


def test_a_batch_whose_submission_failed_is_submitted_again(client):
    """A batch's inputs are made when it is submitted (``args_of[i]()``); when that
    fails in Dask's callback thread, the batch must stay pending and ``gather`` submit
    it, never return without it. Here making a batch's inputs fails in the callback
    thread, and ``gather`` is slow (0.2 s per result), so the callback thread is the
    first to try each next batch."""
    import threading
    import time

    from blockbuster.cluster._batches import BatchRun  # the class StageWork.submit runs

    failed = []

    def args(i):
        def make():
            if threading.current_thread().name.startswith("Dask-Callback-Thread"):
                failed.append(i)
                raise OSError("input not reachable from this thread")
            return (i,)

        return make

    _callbacks_idle(client)  # no callback of an earlier test is still queued there
    run = BatchRun(client, _same, [args(i) for i in range(4)], name="flaky", window=1)
    assert run.gather(lambda i, r: time.sleep(0.2)) == list(range(4))
    assert failed  # the callback thread tried (and failed) at least once

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

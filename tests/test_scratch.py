"""Work memory of a batch: the blockwise table lookup and keeping freed memory."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockbuster.core import map_through
from blockbuster.worker import Scratch, keep_freed_memory
from blockbuster.worker import _memory as scratch


@settings(max_examples=150, deadline=None)
@given(
    shape=st.lists(st.integers(0, 30), min_size=1, max_size=3),
    n=st.integers(1, 400),
    dtype=st.sampled_from([np.uint8, np.uint16, np.int32, np.int64, np.uint64]),
    block=st.sampled_from([1, 7, 64, 1 << 16]),
    seed=st.integers(0, 2**31 - 1),
)
def test_map_through_equals_fancy_indexing(shape, n, dtype, block, seed):
    rng = np.random.default_rng(seed)
    n = min(n, np.iinfo(dtype).max + 1)
    table = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    labels = rng.integers(0, n, shape).astype(dtype)
    out = np.empty(labels.shape, table.dtype)
    assert np.array_equal(map_through(table, labels, out, block=block), table[labels])


@pytest.mark.parametrize("bad", [np.int32(-1), np.int64(7), np.uint64(2**63 + 5)])
def test_map_through_rejects_ids_outside_the_table(bad):
    labels = np.array([[0, 1], [2, 0]], dtype=np.asarray(bad).dtype)
    labels[1, 1] = bad
    with pytest.raises(IndexError, match="outside the table"):
        map_through(np.arange(3), labels, np.empty(labels.shape, np.int64))


def test_scratch_buffers_are_per_name_and_reused():
    s = Scratch()
    a = s.array("in", (100, 100), np.int32)
    b = s.array("in", (50, 50), np.uint8)
    c = s.array("out", (10,), np.float64)
    assert np.shares_memory(a, b) and not np.shares_memory(a, c)
    assert a.flags.c_contiguous and b.shape == (50, 50) and b.dtype == np.uint8
    big = s.array("in", (200, 200), np.int32)  # grows
    assert big.shape == (200, 200)
    s.clear()
    assert not np.shares_memory(s.array("in", (10,), np.int32), big)


_WORKER = """
import resource, numpy as np
from blockbuster.worker import _memory as scratch
from blockbuster.worker import keep_freed_memory

def faults(k=30, nbytes=4 << 20):
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(k):
        np.ones(nbytes, np.uint8)       # allocated, touched, freed
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0

before = faults()
with keep_freed_memory():
    with keep_freed_memory():           # nested batches (threads) share it
        faults(2)
        inside = faults()
    depth = scratch._KEEP_DEPTH
after = faults()
print(before, inside, after, depth, scratch._KEEP_DEPTH)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc settings")
def test_keep_freed_memory_in_a_dask_like_worker():
    """In a process started with distributed's MALLOC_TRIM_THRESHOLD_ (freed memory
    returned at once), large temporaries page-fault every time; inside
    keep_freed_memory they are reused; after it the worker's own setting is back."""
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    p = subprocess.run(
        [sys.executable, "-c", _WORKER], env=env, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr
    before, inside, after, depth, final = map(int, p.stdout.split())
    pages = 30 * (4 << 20) // 4096
    assert before > pages // 2 and after > pages // 2, (before, after, pages)
    assert inside < pages // 10, (inside, pages)
    assert (depth, final) == (1, 0)


def test_keep_freed_memory_does_nothing_outside_a_worker(monkeypatch):
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with keep_freed_memory():
        assert scratch._KEEP_DEPTH == 0

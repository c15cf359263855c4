"""ShardWriter (core/shardfiles.py) writes shards that zarr-python reads back exactly."""

from __future__ import annotations

import itertools

import numpy as np
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockbuster.io import ShardReader, ShardWriter


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    data=st.data(),
    ndim=st.integers(1, 3),
    dtype=st.sampled_from(["u1", "u4", "i8", "f4"]),
    at_end=st.booleans(),
    compressed=st.booleans(),
)
def test_shards_read_back_as_written(data, ndim, dtype, at_end, compressed, tmp_path_factory):
    chunks = tuple(data.draw(st.integers(1, 5)) for _ in range(ndim))
    per = tuple(data.draw(st.integers(1, 3)) for _ in range(ndim))
    shards = tuple(c * p for c, p in zip(chunks, per))
    shape = tuple(data.draw(st.integers(1, 3 * s)) for s in shards)
    kw = {} if compressed else {"compressors": None}
    path = str(tmp_path_factory.mktemp("sh") / "a.zarr")
    z = zarr.create_array(
        store=path,
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        fill_value=0,
        shards={"shape": shards, "index_location": "end" if at_end else "start"},
        **kw,
    )
    w = ShardWriter.of(z)
    assert w is not None and w.at_end == at_end and w.crc
    expect = np.zeros(shape, dtype)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
    n_shards = [-(-s // sh) for s, sh in zip(shape, shards)]
    for sc in itertools.product(*map(range, n_shards)):
        shard = w.shard(sc)
        for ic in itertools.product(*map(range, per)):
            lo = [o * sh + i * c for o, sh, i, c in zip(sc, shards, ic, chunks)]
            if any(a >= s for a, s in zip(lo, shape)) or rng.random() < 0.3:
                continue  # absent inner chunk
            b = tuple((a, min(a + c, s)) for a, c, s in zip(lo, chunks, shape))
            block = rng.integers(1, 100, [hi - a for a, hi in b]).astype(dtype)
            shard.add(b, block)
            expect[tuple(slice(a, hi) for a, hi in b)] = block
        shard.close()
    np.testing.assert_array_equal(zarr.open_array(path, mode="r")[...], expect)


def test_only_sharded_v3_arrays_are_written(tmp_path):
    """Unsharded arrays are not this writer's; a sharded array in a store other than a
    local directory is written through the store (one ``set`` per shard), and read back
    by zarr; only local shards are read directly."""
    plain = zarr.create_array(store=str(tmp_path / "p.zarr"), shape=(8,), chunks=(2,), dtype="u1")
    assert ShardWriter.of(plain) is None
    mem = zarr.create_array(store={}, shape=(8,), chunks=(2,), shards=(4,), dtype="u1")
    assert ShardReader.of(mem) is None
    shard = ShardWriter.of(mem).shard((1,))
    shard.add(((6, 8),), np.array([5, 6], "u1"))
    shard.close()
    assert mem[...].tolist() == [0, 0, 0, 0, 0, 0, 5, 6]
    z = zarr.create_array(
        store=str(tmp_path / "s.zarr"), shape=(8,), chunks=(2,), shards=(4,), dtype="u1"
    )
    s = ShardWriter.of(z).shard((0,))
    try:
        s.add(((1, 3),), np.ones(2, "u1"))
    except ValueError as exc:
        assert "not one inner chunk" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("a misaligned region was accepted")

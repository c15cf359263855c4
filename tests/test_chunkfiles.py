"""Direct chunk-file I/O agrees with zarr-python, both ways, on every layout it accepts."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockbuster.io import ChunkFiles, chunk_files, read_region, read_regions, write_regions

LAYOUTS = {
    "v3-zstd": dict(compressors=zarr.codecs.ZstdCodec(level=1)),
    "v3-blosc": dict(compressors=zarr.codecs.BloscCodec(cname="lz4", shuffle="bitshuffle")),
    "v3-gzip": dict(compressors=zarr.codecs.GzipCodec(level=2)),
    "v3-raw": dict(compressors=None),
    "v2-zstd": dict(zarr_format=2),
    "v2-raw": dict(zarr_format=2, compressors=None),
}


@st.composite
def cases(draw):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(1, 13)) for _ in range(ndim))
    chunks = tuple(draw(st.integers(1, max(1, s))) for s in shape)
    dtype = draw(st.sampled_from(["u1", "u2", "i4", "u8", "f4", "bool"]))
    layout = draw(st.sampled_from(sorted(LAYOUTS)))
    fill = draw(st.sampled_from([0, 1]))
    seed = draw(st.integers(0, 2**31 - 1))
    return shape, chunks, dtype, layout, fill, seed


def _make(tmp_path, name, shape, chunks, dtype, layout, fill):
    kw = dict(LAYOUTS[layout])
    return zarr.create_array(
        store=str(tmp_path / name),
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        fill_value=np.asarray(fill).astype(dtype)[()],
        **kw,
    )


def _random(rng, shape, dtype):
    if dtype == "bool":
        return rng.random(shape) < 0.3
    x = rng.integers(0, 4, shape)  # small values: some chunks all fill
    x[rng.random(shape) < 0.5] = 0
    return x.astype(dtype)


def _regions(rng, shape, k):
    out = []
    for _ in range(k):
        sl = []
        for n in shape:
            a = int(rng.integers(0, n))
            b = int(rng.integers(a, n + 1))
            sl.append(slice(a, b))
        out.append(tuple(sl))
    return out


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=cases())
def test_direct_io_matches_zarr_both_ways(tmp_path_factory, case):
    shape, chunks, dtype, layout, fill, seed = case
    tmp = tmp_path_factory.mktemp("cf")
    rng = np.random.default_rng(seed)
    data = _random(rng, shape, dtype)

    # zarr writes, we read: any region, any alignment
    z = _make(tmp, "a.zarr", shape, chunks, dtype, layout, fill)
    z[...] = data
    cf = ChunkFiles.of(z)
    assert cf is not None, layout
    for sl in _regions(rng, shape, 5) + [tuple(slice(0, n) for n in shape)]:
        got = cf.read(sl)
        np.testing.assert_array_equal(got, np.asarray(z[sl]))
        assert got.dtype == z.dtype and got.flags.writeable

    # many whole chunks in one call (a merge unit's tiles), missing ones as fill
    cells = list(itertools.product(*[range(-(-n // c)) for n, c in zip(shape, chunks)]))
    many = np.empty((len(cells),) + tuple(chunks), z.dtype)
    cf.read_chunks(cells, many)
    for cell, got in zip(cells, many):
        np.testing.assert_array_equal(got, cf.read_chunk(cell))

    # we write whole chunks (edge chunks clipped), zarr reads
    z2 = _make(tmp, "b.zarr", shape, chunks, dtype, layout, fill)
    cf2 = ChunkFiles.of(z2)
    ranges = [range(0, n, c) for n, c in zip(shape, chunks)]

    for origin in itertools.product(*ranges):
        sl = tuple(slice(o, min(o + c, n)) for o, c, n in zip(origin, chunks, shape))
        assert cf2.write(sl, data[sl])
    np.testing.assert_array_equal(np.asarray(z2[...]), data)
    files = [f for _, _, fs in os.walk(tmp / "b.zarr") for f in fs]
    assert not [f for f in files if f.endswith(".partial")]
    # a chunk equal to the fill value everywhere is not stored, as zarr does by default
    n_stored = sum(1 for f in files if not f.startswith((".z", "zarr.json")))
    n_nonfill = sum(
        1
        for origin in itertools.product(*ranges)
        if (
            data[tuple(slice(o, o + c) for o, c in zip(origin, chunks))]
            != np.asarray(fill).astype(dtype)
        ).any()
    )
    assert n_stored == n_nonfill


def test_write_refuses_unaligned_and_writes_nothing(tmp_path):
    z = _make(tmp_path, "a.zarr", (8, 8), (4, 4), "u2", "v3-zstd", 0)
    cf = ChunkFiles.of(z)
    assert not cf.write((slice(1, 5), slice(0, 4)), np.ones((4, 4), "u2"))
    assert not cf.write((slice(0, 4), slice(0, 4)), np.ones((3, 4), "u2"))
    assert not cf.write((slice(0, 4, 2), slice(0, 4)), np.ones((2, 4), "u2"))
    assert int(np.asarray(z[...]).sum()) == 0
    # write_regions falls back to zarr for what the direct path refuses
    write_regions(
        z,
        [
            ((slice(1, 5), slice(0, 4)), np.ones((4, 4), "u2")),
            ((slice(4, 8), slice(4, 8)), np.full((4, 4), 2, "u2")),
        ],
    )
    assert int(np.asarray(z[...]).sum()) == 16 + 32


def test_overwriting_with_fill_removes_the_chunk(tmp_path):
    z = _make(tmp_path, "a.zarr", (4, 4), (2, 2), "u1", "v3-zstd", 0)
    cf = ChunkFiles.of(z)
    cf.write((slice(0, 2), slice(0, 2)), np.ones((2, 2), "u1"))
    assert os.path.exists(cf.path((0, 0)))
    cf.write((slice(0, 2), slice(0, 2)), np.zeros((2, 2), "u1"))
    assert not os.path.exists(cf.path((0, 0)))
    assert int(np.asarray(z[...]).sum()) == 0


def test_nan_fill(tmp_path):
    z = zarr.create_array(
        store=str(tmp_path / "f.zarr"), shape=(4,), chunks=(2,), dtype="f4", fill_value=np.nan
    )
    cf = ChunkFiles.of(z)
    assert cf.write((slice(0, 4),), np.array([np.nan, np.nan, 1, np.nan], "f4"))
    assert not os.path.exists(cf.path((0,)))
    np.testing.assert_array_equal(cf.read((slice(0, 4),)), np.asarray(z[...]))


@pytest.mark.parametrize(
    "kind", ["memory", "sharded", "transpose", "crc32c", "bigendian", "v2-filters", "v2-fortran"]
)
def test_layouts_it_does_not_encode_fall_back_to_zarr(tmp_path, kind):
    p = str(tmp_path / "a.zarr")
    common = dict(shape=(8, 8), dtype="u2", fill_value=0)
    if kind == "memory":
        z = zarr.create_array(store=zarr.storage.MemoryStore(), chunks=(4, 4), **common)
    elif kind == "sharded":
        z = zarr.create_array(store=p, chunks=(2, 2), shards=(4, 4), **common)
    elif kind == "transpose":
        z = zarr.create_array(
            store=p,
            chunks=(4, 4),
            serializer="auto",
            filters=[zarr.codecs.TransposeCodec(order=(1, 0))],
            **common,
        )
    elif kind == "crc32c":
        z = zarr.create_array(
            store=p, chunks=(4, 4), compressors=[zarr.codecs.Crc32cCodec()], **common
        )
    elif kind == "bigendian":
        z = zarr.create_array(
            store=p, chunks=(4, 4), serializer=zarr.codecs.BytesCodec(endian="big"), **common
        )
    elif kind == "v2-filters":
        import numcodecs

        z = zarr.create_array(
            store=p, chunks=(4, 4), zarr_format=2, filters=[numcodecs.Delta(dtype="u2")], **common
        )
    else:
        z = zarr.create_array(store=p, chunks=(4, 4), zarr_format=2, order="F", **common)
    assert ChunkFiles.of(z) is None
    data = np.arange(64, dtype="u2").reshape(8, 8)
    write_regions(
        z, [((slice(0, 4), slice(0, 4)), data[:4, :4]), ((slice(4, 8), slice(0, 8)), data[4:])]
    )
    got = read_regions(z, [(slice(0, 8), slice(0, 8)), (slice(2, 6), slice(1, 3))])
    np.testing.assert_array_equal(got[0][:4, :4], data[:4, :4])
    np.testing.assert_array_equal(got[0][4:], data[4:])
    np.testing.assert_array_equal(read_region(z, (slice(4, 6),)), data[4:6])


def test_read_only_array_is_read_directly_but_never_written(tmp_path):
    z = _make(tmp_path, "a.zarr", (4, 4), (2, 2), "u2", "v3-zstd", 0)
    z[...] = 5
    ro = zarr.open_array(str(tmp_path / "a.zarr"), mode="r")
    cf = chunk_files(ro)
    assert cf is not None and chunk_files(ro) is cf
    assert int(cf.read((slice(0, 4), slice(0, 4))).sum()) == 80
    assert not cf.write((slice(0, 2), slice(0, 2)), np.zeros((2, 2), "u2"))


def test_group_member_path(tmp_path):
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    z = g.create_array("labels/0", shape=(6, 6), chunks=(3, 3), dtype="u4", fill_value=0)
    cf = ChunkFiles.of(z)
    assert cf.directory.endswith(os.path.join("g.zarr", "labels/0"))
    assert cf.write((slice(3, 6), slice(0, 3)), np.full((3, 3), 9, "u4"))
    assert int(np.asarray(g["labels/0"][...]).sum()) == 81


def test_direct_path_can_be_switched_off(tmp_path, monkeypatch):
    """BLOCKBUSTER_DIRECT_CHUNKS=false: neither reads nor writes take the direct path
    (one eligibility check for both), and zarr-python gives the same bytes back."""
    from blockbuster.errors import InvalidParameterError
    from blockbuster.io import ShardWriter

    plain = zarr.create_array(tmp_path / "a.zarr", shape=(8, 8), chunks=(4, 4), dtype="u2")
    sharded = zarr.create_array(
        tmp_path / "s.zarr", shape=(8, 8), chunks=(4, 4), shards=(8, 8), dtype="u2"
    )
    assert ChunkFiles.of(plain) is not None and ShardWriter.of(sharded) is not None
    monkeypatch.setenv("BLOCKBUSTER_DIRECT_CHUNKS", "false")
    assert ChunkFiles.of(plain) is None and ShardWriter.of(sharded) is None
    data = np.arange(64, dtype="u2").reshape(8, 8)
    write_regions(plain, [((slice(0, 8), slice(0, 8)), data)])
    assert np.array_equal(read_region(plain, (slice(0, 8), slice(0, 8))), data)
    monkeypatch.setenv("BLOCKBUSTER_DIRECT_CHUNKS", "sometimes")
    with pytest.raises(InvalidParameterError, match="BLOCKBUSTER_DIRECT_CHUNKS"):
        ChunkFiles.of(plain)


def test_read_chunks_checks_its_buffer_and_names_a_damaged_file(tmp_path):
    """The unit reader's loop (ChunkFiles.read_chunks): a buffer of the wrong shape is
    refused before any file is read; a damaged chunk file (here longer than any frame
    of its chunk, the path that reads a file to its end) names its path."""
    from blockbuster.errors import InputError

    z = zarr.create_array(
        store=str(tmp_path / "a.zarr"), shape=(8, 8), chunks=(4, 4), dtype="i4", fill_value=0
    )
    z[...] = np.arange(64, dtype="i4").reshape(8, 8)
    cf = ChunkFiles.of(z)
    with pytest.raises(ValueError, match=r"shape \(2, 4, 4\)"):
        cf.read_chunks([(0, 0), (1, 1)], np.empty((2, 4, 5), "i4"))
    with open(cf.path((1, 0)), "wb") as f:
        f.write(os.urandom(4 * 4 * 4 * 3 + 4096))
    out = np.empty((2, 4, 4), "i4")
    with pytest.raises(InputError, match=r"chunk file .*c/1/0.* could not be decoded"):
        cf.read_chunks([(0, 0), (1, 0)], out)
    np.testing.assert_array_equal(out[0], np.asarray(z[:4, :4]))

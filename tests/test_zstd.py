"""The direct chunk path's zstd (io/_zstd.py) writes what zarr and numcodecs read and
reads what they wrote, small chunks (per-thread zstandard contexts) and large ones
(numcodecs) alike, at the array's level and checksum setting."""

from __future__ import annotations

import pickle
import threading

import numcodecs
import numpy as np
import pytest
import zarr
import zstandard

from blockbuster.io import ChunkFiles, ShardReader, ShardWriter
from blockbuster.io._zstd import SMALL, Zstd, faster


def _labels(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 5, shape) * (rng.random(shape) < 0.4)).astype("<i4")


@pytest.mark.parametrize("nbytes", [4, 64 * 1024, SMALL, SMALL + 4, 4 * SMALL])
@pytest.mark.parametrize("checksum", [False, True])
def test_frames_both_ways_with_numcodecs(nbytes, checksum):
    a = _labels(nbytes // 4, seed=nbytes)
    ours, theirs = Zstd(level=1, checksum=checksum), numcodecs.Zstd(level=1, checksum=checksum)
    frame = ours.encode(a)
    assert zstandard.get_frame_parameters(bytes(frame)).has_checksum == checksum
    assert zstandard.get_frame_parameters(bytes(frame)).content_size == a.nbytes
    np.testing.assert_array_equal(np.frombuffer(theirs.decode(frame), "<i4"), a)
    out = np.full_like(a, -1)
    assert ours.decode(theirs.encode(a), out=out) is out
    np.testing.assert_array_equal(out, a)


def test_level_is_the_arrays():
    a = np.tile(np.arange(64, dtype="<i4"), 256)  # 64 KiB, compresses very differently
    fast, best = Zstd(level=-20).encode(a), Zstd(level=19).encode(a)
    assert len(best) < len(fast)
    assert len(Zstd(level=0).encode(a)) == len(Zstd(level=3).encode(a))  # 0: the default


def test_frames_without_content_size_and_bad_frames():
    a = _labels(1000)
    streamed = zstandard.ZstdCompressor(write_content_size=False).compress(a.tobytes())
    out = np.empty_like(a)
    Zstd().decode(streamed, out=out)
    np.testing.assert_array_equal(out, a)
    with pytest.raises(ValueError, match="decoded to 4000 bytes where 8000"):
        Zstd().decode(Zstd().encode(a), out=np.empty(2000, "<i4"))
    bad = bytearray(Zstd(checksum=True).encode(a))
    bad[-1] ^= 0xFF  # the checksum
    with pytest.raises(zstandard.ZstdError):
        Zstd().decode(bytes(bad), out=out)


def test_threads_share_one_codec_and_it_pickles():
    codec = pickle.loads(pickle.dumps(Zstd(level=2, checksum=True)))
    assert (codec.level, codec.checksum) == (2, True)
    chunks = [_labels((128, 128), seed=s) for s in range(8)]
    errors = []

    def work(i):
        out = np.empty((128, 128), "<i4")
        for _ in range(50):
            c = chunks[i]
            codec.decode(codec.encode(c), out=out)
            if not np.array_equal(out, c):
                errors.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_chunk_and_shard_files_use_it_and_zarr_reads_them(tmp_path):
    assert type(faster(numcodecs.Zstd(level=4))) is Zstd
    blosc = numcodecs.Blosc()
    assert faster(blosc) is blosc
    data = _labels((96, 80), seed=3)
    for fmt in (2, 3):
        z = zarr.create_array(
            store=str(tmp_path / f"v{fmt}.zarr"),
            shape=data.shape,
            chunks=(32, 16),
            dtype="<i4",
            fill_value=0,
            zarr_format=fmt,
            **({"compressors": zarr.codecs.ZstdCodec(level=5)} if fmt == 3 else {}),
        )
        cf = ChunkFiles.of(z)
        assert type(cf.codec) is Zstd, fmt
        assert cf.write((slice(0, 96), slice(0, 80)), data)
        np.testing.assert_array_equal(z[...], data)  # zarr reads our frames
    z = zarr.create_array(
        store=str(tmp_path / "s.zarr"),
        shape=data.shape,
        chunks=(16, 16),
        shards=(32, 32),
        dtype="<i4",
        fill_value=0,
    )
    z[...] = data  # zarr writes, ShardReader reads
    out = np.zeros((32, 32), "<i4")
    r = ShardReader.of(zarr.open_array(str(tmp_path / "s.zarr"), mode="r"))
    assert type(r.codec) is Zstd
    r.read_shard((1, 2), out[:, :16])
    np.testing.assert_array_equal(out[:, :16], data[32:64, 64:80])
    w = ShardWriter.of(z)
    shard = w.shard((0, 0))
    for i in range(2):
        for j in range(2):
            tb = ((16 * i, 16 * i + 16), (16 * j, 16 * j + 16))
            shard.add(tb, data[16 * i : 16 * i + 16, 16 * j : 16 * j + 16] + 7)
    shard.close()
    np.testing.assert_array_equal(z[:32, :32], data[:32, :32] + 7)  # zarr reads ours


def test_a_damaged_chunk_or_shard_names_its_file(tmp_path):
    from blockbuster.errors import InputError

    data = _labels((32, 32), seed=5)
    z = zarr.create_array(
        store=str(tmp_path / "a.zarr"), shape=(32, 32), chunks=(16, 16), dtype="<i4"
    )
    z[...] = data
    path = tmp_path / "a.zarr" / "c" / "1" / "0"
    path.write_bytes(path.read_bytes()[:-7])  # a truncated frame
    cf = ChunkFiles.of(z)
    np.testing.assert_array_equal(cf.read((slice(0, 16), slice(0, 32))), data[:16])
    with pytest.raises(InputError, match=r"chunk file .*c/1/0.* could not be decoded") as e:
        cf.read((slice(16, 32), slice(0, 16)))
    assert isinstance(e.value, OSError)
    s = zarr.create_array(
        store=str(tmp_path / "s.zarr"),
        shape=(32, 32),
        chunks=(8, 8),
        shards=(16, 16),
        dtype="<i4",
    )
    s[...] = data
    shard = tmp_path / "s.zarr" / "c" / "0" / "1"
    blob = bytearray(shard.read_bytes())
    blob[:8] = b"\xff" * 8  # the first inner chunk's frame header
    shard.write_bytes(bytes(blob))
    r = ShardReader.of(zarr.open_array(str(tmp_path / "s.zarr"), mode="r"))
    with pytest.raises(
        InputError, match=r"shard file .*c/0/1' \(inner chunk \(0, 0\)\) could not be"
    ):
        r.read_shard((0, 1), np.zeros((16, 16), "<i4"))

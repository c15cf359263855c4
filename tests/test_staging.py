"""The staging area: packs of finished tiles, partial reads, cut-off records ignored,
reuse only for the same run."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockbuster.core import compact_labels, present_ids
from blockbuster.io import Staging


def test_round_trip_and_partial_reads(tmp_path):
    st = Staging(tmp_path / "s")
    assert st.prepare({"run_key": "k"}) is False
    arrays = {
        "labels": np.arange(12, dtype=np.uint16).reshape(3, 4),
        "f0lo": np.array([1, 2, 3], np.uint8),
        "empty": np.zeros((0, 5), np.uint32),
        "big": np.arange(70000, dtype=np.uint32),
    }
    with st:
        st.write_tile(7, {"n_labels": 11, "origin": [np.int64(3), 4]}, arrays)
    rec, got = st.read_tile(7)
    assert rec == {"n_labels": 11, "origin": [3, 4]}
    assert set(got) == set(arrays)
    for k, v in arrays.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape
        np.testing.assert_array_equal(got[k], v)
    rec, part = st.read_tile(7, names=("f0lo", "missing"))
    assert list(part) == ["f0lo"]
    assert st.read_record(7)["n_labels"] == 11
    assert st.finished_tiles() == [7] and st.is_finished(7) and not st.is_finished(6)
    # one pack for the writer, nothing else
    assert [p.endswith(".pack") for p in os.listdir(st.tiles_dir)] == [True]
    with pytest.raises(FileNotFoundError, match="tile 6 is not staged"):
        st.read_tile(6)


def test_tiles_staged_with_the_earlier_codec_resume(tmp_path, monkeypatch):
    """Staged arrays were written with Blosc's byte shuffle until the codec dropped it:
    a staging written then (a run interrupted before an upgrade) still reads back
    exactly, beside tiles written now, so its tiles resume."""
    from numcodecs import Blosc

    from blockbuster.io._staging import _format

    labels = (np.arange(64 * 64) // 7 % 300).astype(np.uint16).reshape(64, 64)
    st = Staging(tmp_path / "s")
    st.prepare({"run_key": "k"})
    earlier = Blosc(cname="lz4", clevel=1, shuffle=Blosc.SHUFFLE)
    monkeypatch.setattr(_format, "_CODEC", earlier)
    with st:
        st.write_tile(0, {"n_labels": 300}, {"labels": labels})
    monkeypatch.undo()
    assert _format._CODEC.shuffle != earlier.shuffle  # the codec of today differs
    with Staging(tmp_path / "s") as st2:
        assert st2.prepare({"run_key": "k"}) is True
        st2.write_tile(1, {"n_labels": 300}, {"labels": labels[::-1]})
    reader = Staging(tmp_path / "s")
    np.testing.assert_array_equal(reader.read_tile(0)[1]["labels"], labels)
    np.testing.assert_array_equal(reader.read_tile(1)[1]["labels"], labels[::-1])


def test_writers_pack_their_tiles_and_readers_see_new_ones(tmp_path):
    st = Staging(tmp_path / "s")
    st.prepare({"run_key": "k"})
    reader = Staging(tmp_path / "s")
    assert reader.finished_tiles() == []
    with Staging(tmp_path / "s") as w1, Staging(tmp_path / "s") as w2:
        for n in range(0, 10, 2):
            w1.write_tile(n, {"n_labels": n}, {"labels": np.full((4, 4), n, np.uint8)})
            w2.write_tile(n + 1, {"n_labels": n + 1})
        # readers see tiles as soon as they are written, while the packs are still open
        assert reader.read_record(9)["n_labels"] == 9
    assert len(os.listdir(st.tiles_dir)) == 2
    assert reader.finished_tiles() == list(range(10))
    assert int(reader.read_tile(8)[1]["labels"].sum()) == 8 * 16


def test_a_record_cut_off_by_a_crash_is_not_a_finished_tile(tmp_path):
    st = Staging(tmp_path / "s")
    st.prepare({"run_key": "k"})
    with st:
        st.write_tile(0, {"n_labels": 1}, {"labels": np.ones((8, 8), np.uint8)})
        st.write_tile(1, {"n_labels": 1}, {"labels": np.ones((8, 8), np.uint8)})
    (pack,) = os.listdir(st.tiles_dir)
    path = os.path.join(st.tiles_dir, pack)
    size = os.path.getsize(path)
    for cut in (size - 1, size - 20):
        with open(path, "r+b") as f:
            f.truncate(cut)
        fresh = Staging(tmp_path / "s")
        fresh._index = None
        from blockbuster.io._staging import _local as mod

        mod._INDEXES.clear()  # a new process: no index yet
        assert fresh.finished_tiles() == [0]
    # the tile is written again by the rerun; both are readable
    with Staging(tmp_path / "s") as w:
        w.write_tile(1, {"n_labels": 1}, {"labels": np.ones((8, 8), np.uint8)})
    assert Staging(tmp_path / "s").finished_tiles() == [0, 1]


def test_same_run_reused_other_run_or_format_wiped(tmp_path):
    st = Staging(tmp_path / "s")
    st.prepare({"run_key": "a"})
    gen = st.generation
    with st:
        st.write_tile(0, {"n_labels": 0})
    assert st.prepare({"run_key": "a"}) is True  # a resume keeps the tiles
    assert st.finished_tiles() == [0] and st.generation == gen
    assert st.prepare({"run_key": "b"}) is False  # another run: wiped
    assert st.finished_tiles() == [] and st.generation != gen
    # a staging written by an older blockbuster (format 1: a file per tile) is never
    # reused
    info = json.load(open(st.info_path))
    info["format"] = 1
    json.dump(info, open(st.info_path, "w"))
    with st:
        st.write_tile(3, {"n_labels": 0})
    assert st.prepare({"run_key": "b"}) is False and st.finished_tiles() == []


def test_foreign_file_is_a_clear_error(tmp_path):
    st = Staging(tmp_path / "s")
    st.prepare({"run_key": "k"})
    with open(os.path.join(st.tiles_dir, "x.pack"), "wb") as f:
        f.write(b"PK\x03\x04 not ours")
    with pytest.raises(OSError, match="not a blockbuster staging pack"):
        st.read_tile(2)


@pytest.mark.parametrize(
    "n, dtype", [(0, np.uint8), (255, np.uint8), (256, np.uint16), (70000, np.uint32)]
)
def test_staged_labels_use_the_smallest_dtype(n, dtype):
    lab = np.zeros(2 * n + 2, np.int64)
    lab[1 : 2 * n : 2] = np.arange(1, n + 1) * 9  # n distinct, gappy ids
    out, k = compact_labels(lab, small=True)
    assert k == n and out.dtype == dtype
    assert out.max(initial=0) == n
    np.testing.assert_array_equal(out > 0, lab > 0)


@settings(max_examples=200, deadline=None)
@given(
    shape=st.lists(st.integers(0, 40), min_size=1, max_size=3),
    n_ids=st.integers(1, 50),
    big=st.booleans(),
    dtype=st.sampled_from([np.uint8, np.uint16, np.int32, np.uint32, np.int64, np.uint64]),
    runs=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_present_ids_equals_unique(shape, n_ids, big, dtype, runs, seed):
    """present_ids (run starts only, when runs are long) equals np.unique minus 0."""
    rng = np.random.default_rng(seed)
    hi = min(np.iinfo(dtype).max, 2**40 if big else 300)
    pool = rng.integers(0, hi, n_ids, endpoint=True)
    lab = pool[rng.integers(0, n_ids, shape)]
    if runs and lab.size:  # long runs of equal values
        lab = np.repeat(lab.reshape(-1), 8)[: lab.size].reshape(shape)
    lab = lab.astype(dtype)
    expected = np.unique(lab)
    expected = expected[expected > 0].astype(np.int64)
    got = present_ids(lab)
    assert got.dtype == np.int64
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("durable", [True, False])
def test_packs_are_fsynced_unless_the_staging_is_scratch(tmp_path, monkeypatch, durable):
    """A run's staging is on stable storage when its writer closes (a later process
    resumes from it); a scratch staging (a call without write_to or staging=, in a
    temporary folder removed at exit) is not fsync-ed: nothing could resume from it."""
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    st = Staging(tmp_path / "s", durable=durable)
    st.prepare({"run_key": "k"})
    synced.clear()
    with st:
        st.write_tile(0, {"n_labels": 1}, {"labels": np.ones((4, 4), np.uint8)})
    assert st.finished_tiles() == [0]
    assert bool(synced) is durable


@pytest.mark.parametrize("temporary", [False, True])
def test_output_is_fsynced_before_its_completion_record_unless_temporary(
    tmp_path, monkeypatch, temporary
):
    import blockbuster.io._durable as durable_mod
    from blockbuster.io import OutputTarget

    trees: list[str] = []
    real = durable_mod.fsync_tree
    monkeypatch.setattr(durable_mod, "fsync_tree", lambda p: (trees.append(p), real(p))[1])
    out = OutputTarget(str(tmp_path / "labels.zarr"), temporary=temporary)
    out.create((8, 8), np.uint32, (4, 4), {"run_key": "k"})
    assert out.completed_run() is None
    out.mark_complete({"result_key": "r"})
    assert out.completed_run()["result_key"] == "r"
    assert trees == ([] if temporary else [out.path])

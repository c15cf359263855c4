"""The staging area: atomic per-tile files, partial reads, reuse only for the same run."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from blockbuster.core.labels import compact_labels
from blockbuster.core.staging import Staging


def test_round_trip_and_partial_reads(tmp_path):
    st = Staging(tmp_path / "s")
    assert st.prepare({"run_key": "k"}) is False
    arrays = {"labels": np.arange(12, dtype=np.uint16).reshape(3, 4),
              "f0lo": np.array([1, 2, 3], np.uint8),
              "empty": np.zeros((0, 5), np.uint32),
              "big": np.arange(70000, dtype=np.uint32)}
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
    # no temporary files are left behind
    assert os.listdir(st.tiles_dir) == ["7.tile"]


def test_same_run_reused_other_run_or_format_wiped(tmp_path):
    st = Staging(tmp_path / "s")
    st.prepare({"run_key": "a"})
    gen = st.generation
    st.write_tile(0, {"n_labels": 0})
    assert st.prepare({"run_key": "a"}) is True            # a resume keeps the tiles
    assert st.finished_tiles() == [0] and st.generation == gen
    assert st.prepare({"run_key": "b"}) is False           # another run: wiped
    assert st.finished_tiles() == [] and st.generation != gen
    # a staging written by an older blockbuster (no format 1) is never reused
    info = json.load(open(st.info_path))
    info.pop("format")
    json.dump(info, open(st.info_path, "w"))
    st.write_tile(3, {"n_labels": 0})
    assert st.prepare({"run_key": "b"}) is False and st.finished_tiles() == []


def test_foreign_file_is_a_clear_error(tmp_path):
    st = Staging(tmp_path / "s")
    st.prepare({"run_key": "k"})
    with open(st.tile_path(2), "wb") as f:
        f.write(b"PK\x03\x04 not ours")
    with pytest.raises(OSError, match="not a blockbuster staging file"):
        st.read_tile(2)


@pytest.mark.parametrize("n, dtype", [(0, np.uint8), (255, np.uint8), (256, np.uint16),
                                      (70000, np.uint32)])
def test_staged_labels_use_the_smallest_dtype(n, dtype):
    lab = np.zeros(2 * n + 2, np.int64)
    lab[1:2 * n:2] = np.arange(1, n + 1) * 9      # n distinct, gappy ids
    out, k = compact_labels(lab, small=True)
    assert k == n and out.dtype == dtype
    assert out.max(initial=0) == n
    np.testing.assert_array_equal(out > 0, lab > 0)

"""Tests of blockbuster.core: instance F1 and partition equality."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from blockbuster.core import contingency, instance_f1, same_partition


def _blocks() -> np.ndarray:
    truth = np.zeros((10, 10), dtype=np.uint32)
    truth[0:4, 0:4] = 1
    truth[0:4, 5:9] = 2
    truth[6:10, 0:4] = 3
    truth[6:10, 5:10] = 4
    return truth


def test_perfect_match_with_other_ids_and_dtype():
    truth = _blocks()
    pred = np.where(truth > 0, truth.astype(np.int64) * 1000 + 7, 0)
    r = instance_f1(pred, truth)
    assert r == {
        "f1": 1.0,
        "precision": 1.0,
        "recall": 1.0,
        "tp": 4,
        "fp": 0,
        "fn": 0,
        "n_pred": 4,
        "n_true": 4,
        "mean_iou": 1.0,
    }


def test_merge_split_missing_and_extra():
    truth = _blocks()
    pred = np.zeros_like(truth)
    pred[0:4, 0:9] = 1  # merges truth 1 and 2 (IoU 16/36 each: no match)
    pred[6:10, 0:2] = 2  # splits truth 3 into two halves (IoU 0.5 each)
    pred[6:10, 2:4] = 3
    pred[2, 9] = 9  # a spurious object; truth 4 is missed
    r = instance_f1(pred, truth)
    # truth 3 matches one half at IoU exactly 0.5 (>= threshold)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 3, 3)
    assert r["precision"] == pytest.approx(1 / 4)
    assert r["recall"] == pytest.approx(1 / 4)
    assert r["f1"] == pytest.approx(2 * 1 / (2 * 1 + 3 + 3))
    assert r["mean_iou"] == pytest.approx(0.5)


def test_threshold_is_inclusive_and_stricter_threshold_rejects():
    truth = np.array([[1, 1, 1, 1]])
    pred = np.array([[1, 1, 0, 0]])
    assert instance_f1(pred, truth, iou=0.5)["tp"] == 1
    assert instance_f1(pred, truth, iou=0.51)["tp"] == 0


def test_low_threshold_matching_is_one_to_one():
    truth = np.array([[1, 1, 1, 1, 1, 1]])
    pred = np.array([[1, 1, 2, 2, 3, 3]])  # each piece has IoU 1/3 with the one truth
    r = instance_f1(pred, truth, iou=0.3)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 2, 0)


def test_empty_images():
    empty = np.zeros((5, 5), np.uint16)
    assert instance_f1(empty, empty)["f1"] == 1.0
    r = instance_f1(empty, _blocks()[:5, :5])
    assert (r["tp"], r["fp"], r["fn"], r["recall"], r["f1"]) == (0, 0, 1, 0.0, 0.0)
    r = instance_f1(_blocks()[:5, :5], empty)
    assert (r["fp"], r["precision"], r["f1"]) == (1, 0.0, 0.0)


def test_huge_ids_do_not_overflow():
    truth = _blocks().astype(np.uint64)
    big = np.uint64(2**63 + 12345)
    pred = np.where(truth > 0, truth * np.uint64(2**61) + big, 0).astype(np.uint64)
    assert instance_f1(pred, truth)["f1"] == 1.0
    assert same_partition(pred, truth)


def test_3d_and_shape_mismatch():
    truth = np.zeros((4, 6, 6), np.int32)
    truth[:, :3] = 1
    truth[:, 3:] = 2
    assert instance_f1(truth * 5, truth)["tp"] == 2
    with pytest.raises(ValueError, match="shape"):
        instance_f1(truth[0], truth)
    with pytest.raises(ValueError, match="iou"):
        instance_f1(truth, truth, iou=0)


def test_contingency_counts():
    table, a_ids, b_ids = contingency(np.array([[0, 3], [3, 3]]), np.array([[0, 1], [1, 2]]))
    assert a_ids.tolist() == [0, 3] and b_ids.tolist() == [0, 1, 2]
    assert table.toarray().tolist() == [[1, 0, 0], [0, 2, 1]]
    assert table.dtype == np.int64


def test_same_partition():
    truth = _blocks()
    assert same_partition(truth, truth * 3 + (truth > 0))
    merged = truth.copy()
    merged[merged == 2] = 1
    assert not same_partition(truth, merged)
    assert not same_partition(merged, truth)
    shifted = truth.copy()
    shifted[0, 0] = 0
    assert not same_partition(truth, shifted)
    assert not same_partition(truth, truth[:5])


label_images = hnp.arrays(
    np.int64, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.integers(0, 5)
)


@given(labels=label_images, perm_seed=st.integers(0, 2**32 - 1))
@settings(max_examples=60, deadline=None)
def test_relabelling_is_a_perfect_match(labels, perm_seed):
    ids = np.unique(labels[labels > 0])
    new = np.random.default_rng(perm_seed).permutation(len(ids)) + 100
    lut = dict(zip(ids.tolist(), new.tolist()))
    relabelled = np.vectorize(lambda v: lut.get(v, 0))(labels) if labels.size else labels
    r = instance_f1(relabelled, labels)
    assert r["f1"] == 1.0 and r["tp"] == len(ids)
    assert same_partition(relabelled, labels)


@given(a=label_images, data=st.data())
@settings(max_examples=60, deadline=None)
def test_matching_is_symmetric(a, data):
    b = data.draw(hnp.arrays(np.int64, a.shape, elements=st.integers(0, 5)))
    ab, ba = instance_f1(a, b), instance_f1(b, a)
    assert ab["tp"] == ba["tp"] and ab["fp"] == ba["fn"] and ab["fn"] == ba["fp"]
    assert ab["f1"] == pytest.approx(ba["f1"])
    assert 0 <= ab["tp"] <= min(ab["n_pred"], ab["n_true"])

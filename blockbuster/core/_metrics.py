"""Label-image comparison metrics: instance F1 by IoU matching, and partition equality.

Both work on label images of any integer dtype and any ids (gappy, uint64, up to the
largest values): the ids are first compacted with :func:`numpy.unique`, and pair counts
are accumulated in a :mod:`scipy.sparse` contingency table with int64 counts, so neither
large ids nor large voxel counts overflow anything.

Examples
--------
>>> import numpy as np
>>> truth = np.array([[1, 1, 0, 2, 2]])
>>> pred = np.array([[7, 7, 0, 9, 0]])
>>> r = instance_f1(pred, truth)
>>> r["tp"], r["fp"], r["fn"], r["f1"]
(2, 0, 0, 1.0)
>>> same_partition(truth, np.array([[5, 5, 0, 3, 3]]))
True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.sparse.csgraph import maximum_bipartite_matching

__all__ = ["contingency", "instance_f1", "same_partition"]


def _compact(a: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any]]:
    """Unique values of ``a`` and ``a`` replaced by their index among them (int64)."""
    values, inverse = np.unique(np.asarray(a).ravel(), return_inverse=True)
    return values, inverse.astype(np.int64, copy=False).ravel()


def contingency(
    a: NDArray[Any], b: NDArray[Any]
) -> tuple[sp.csr_matrix, NDArray[Any], NDArray[Any]]:
    """Sparse contingency table of two label images of the same shape.

    Parameters
    ----------
    a, b : ndarray of int
        Label images (any integer dtype, any ids; 0 is not treated specially here).

    Returns
    -------
    table : scipy.sparse.csr_matrix of int64, shape (len(a_ids), len(b_ids))
        ``table[i, j]`` = number of voxels with ``a == a_ids[i]`` and ``b == b_ids[j]``.
    a_ids, b_ids : ndarray
        The sorted distinct values of ``a`` and ``b``.

    Examples
    --------
    >>> import numpy as np
    >>> t, ai, bi = contingency(np.array([0, 1, 1, 5]), np.array([0, 2, 3, 3]))
    >>> ai.tolist(), bi.tolist(), t.toarray().tolist()
    ([0, 1, 5], [0, 2, 3], [[1, 0, 0], [0, 1, 1], [0, 0, 1]])
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"label images differ in shape: {a.shape} vs {b.shape}")
    a_ids, ai = _compact(a)
    b_ids, bi = _compact(b)
    ones = np.ones(ai.size, dtype=np.int64)
    table = sp.coo_matrix((ones, (ai, bi)), shape=(len(a_ids), len(b_ids))).tocsr()
    table.sum_duplicates()
    return table, a_ids, b_ids


def instance_f1(pred: NDArray[Any], truth: NDArray[Any], iou: float = 0.5) -> dict[str, Any]:
    """Instance-level precision, recall and F1 of ``pred`` against ``truth``.

    A predicted object and a true object match when their intersection over union is
    ``>= iou``; each object matches at most one other (maximum one-to-one matching, which
    for ``iou > 0.5`` is simply every pair over the threshold, since such pairs cannot
    share an object). Label 0 is background in both images and is never an object.

    Parameters
    ----------
    pred, truth : ndarray of int
        Predicted and true label images, same shape, any integer dtype and ids.
    iou : float
        IoU threshold in (0, 1].

    Returns
    -------
    dict
        ``f1``, ``precision``, ``recall`` (floats; ``tp / (tp + fp)`` etc., with 0/0 taken
        as 1.0, so two empty images score 1.0 and an empty prediction of a non-empty
        truth scores recall 0 and F1 0), ``tp``, ``fp``, ``fn`` (ints), ``n_pred``,
        ``n_true`` and ``mean_iou`` (mean IoU of the matched pairs; 0.0 when none).

    Examples
    --------
    >>> import numpy as np
    >>> truth = np.zeros((6, 6), int)
    >>> truth[:3, :2], truth[:3, 2:4], truth[:3, 4:], truth[4:, :] = 1, 2, 4, 3
    >>> pred = np.zeros((6, 6), int)
    >>> pred[:3, :], pred[4:, :] = 1, 8   # 1, 2 and 4 merged into one: IoU 1/3 each
    >>> r = instance_f1(pred, truth)
    >>> r["tp"], r["fp"], r["fn"], round(r["f1"], 3)
    (1, 1, 3, 0.333)
    """
    if not 0 < iou <= 1:
        raise ValueError(f"iou={iou!r} must be in (0, 1]")
    table, t_ids, p_ids = contingency(truth, pred)
    t_obj = t_ids != 0
    p_obj = p_ids != 0
    n_true, n_pred = int(t_obj.sum()), int(p_obj.sum())
    t_size = np.asarray(table.sum(axis=1)).ravel()
    p_size = np.asarray(table.sum(axis=0)).ravel()
    coo = table.tocoo()
    rows, cols, inter = coo.row, coo.col, coo.data.astype(np.float64)
    keep = t_obj[rows] & p_obj[cols]
    rows, cols, inter = rows[keep], cols[keep], inter[keep]
    union = t_size[rows] + p_size[cols] - inter
    ious = inter / union
    cand = ious >= iou
    rows, cols, ious = rows[cand], cols[cand], ious[cand]
    if rows.size and (np.unique(rows).size < rows.size or np.unique(cols).size < cols.size):
        # Conflicts (only possible for iou <= 0.5): maximum one-to-one matching.
        graph = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=table.shape)
        match = maximum_bipartite_matching(graph, perm_type="column")
        matched_rows = np.flatnonzero(match >= 0)
        pair_iou = {(int(r), int(c)): float(v) for r, c, v in zip(rows, cols, ious)}
        matched_ious = [pair_iou[(int(r), int(match[r]))] for r in matched_rows]
    else:
        matched_ious = ious.tolist()
    tp = len(matched_ious)
    fp, fn = n_pred - tp, n_true - tp
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0
    return {
        "f1": float(f1),
        "precision": float(precision),
        "recall": float(recall),
        "tp": int(tp),
        "fp": int(fp),
        "fn": int(fn),
        "n_pred": n_pred,
        "n_true": n_true,
        "mean_iou": float(np.mean(matched_ious)) if matched_ious else 0.0,
    }


def same_partition(a: NDArray[Any], b: NDArray[Any]) -> bool:
    """Whether two label images are equal up to a renaming of the ids, 0 staying 0.

    This is the test of "the tiled result equals whole-image labelling as a partition":
    every object of ``a`` is exactly one object of ``b`` and vice versa, and the
    background is the same.

    Examples
    --------
    >>> import numpy as np
    >>> same_partition(np.array([0, 1, 1, 2]), np.array([0, 9, 9, 4]))
    True
    >>> same_partition(np.array([0, 1, 1, 2]), np.array([0, 9, 9, 9]))  # merged
    False
    >>> same_partition(np.array([0, 1]), np.array([3, 1]))  # background differs
    False
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        return False
    if not np.array_equal(a == 0, b == 0):
        return False
    table, _, _ = contingency(a, b)
    # A bijection: every row and every column has exactly one non-zero entry.
    return bool(np.all(np.diff(table.indptr) == 1) and np.all(np.diff(table.tocsc().indptr) == 1))

"""Finding which labels of neighbouring tiles are one object.

Two ways, both working only on the small per-tile side data kept at staging:

- :func:`touch_pairs`: labels that touch across the seam between tile A and its forward
  neighbour B (offset ``delta``) under ``connectivity`` (1 = faces ... ndim = full), from
  the boundary faces of the two tile cores. Diagonal neighbours (tiles meeting at an edge
  or corner) are handled by the same rule, so the union of all pairs reproduces
  whole-image connected components exactly.
- :func:`overlap_pairs`: labels whose segmentations of the shared halo band overlap with
  IoU >= ``iou_threshold``, matched one-to-one (mutual best match), so that two cells
  that merely touch at the seam stay two cells.

Local ids are the compacted ids of staging: 1..n are the tile core's labels; in halo
bands, ids above n are objects seen only in the halo.

Examples
--------
>>> import numpy as np
>>> a = np.array([1, 0, 2]); b = np.array([0, 3, 3])
>>> touch_pairs_planes(a, b, free_budget=0).tolist()
[[2, 3]]
>>> touch_pairs_planes(a, b, free_budget=1).tolist()
[[1, 3], [2, 3]]
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "face_key",
    "band_key",
    "touch_pairs",
    "touch_pairs_planes",
    "overlap_pairs",
    "match_iou",
]


def face_key(axis: int, hi: bool) -> str:
    return f"f{axis}{'hi' if hi else 'lo'}"


def band_key(axis: int, hi: bool) -> str:
    return f"b{axis}{'hi' if hi else 'lo'}"


def _unique_pairs(a: NDArray[Any], b: NDArray[Any]) -> NDArray[Any]:
    if a.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    a = a.astype(np.int64, copy=False)
    b = b.astype(np.int64, copy=False)
    width = int(b.max()) + 1
    keys = np.unique(a * width + b)
    return np.stack([keys // width, keys % width], axis=1)


def touch_pairs_planes(a: NDArray[Any], b: NDArray[Any], free_budget: int) -> NDArray[Any]:
    """Touching label pairs between two facing planes ``a`` and ``b`` of equal shape.

    Voxel ``a[x]`` touches ``b[x + o]`` for every offset ``o`` in {-1, 0, 1}^k with at
    most ``free_budget`` non-zero entries (the connectivity left once the seam itself is
    crossed).
    """
    assert a.shape == b.shape
    pa, pb = [], []
    for off in itertools.product((-1, 0, 1), repeat=a.ndim):
        if sum(o != 0 for o in off) > free_budget:
            continue
        sa = tuple(slice(max(0, -o), s - max(0, o)) for o, s in zip(off, a.shape))
        sb = tuple(slice(max(0, o), s - max(0, -o)) for o, s in zip(off, a.shape))
        av, bv = a[sa], b[sb]
        mask = (av > 0) & (bv > 0)
        if mask.any():
            pa.append(av[mask])
            pb.append(bv[mask])
    if not pa:
        return np.zeros((0, 2), dtype=np.int64)
    return _unique_pairs(np.concatenate(pa), np.concatenate(pb))


def _edge(face: NDArray[Any], face_axis: int, delta: tuple[int, ...]) -> NDArray[Any]:
    """Reduce a face (axis ``face_axis`` removed) to the part touching ``delta``'s other axes."""
    nz = [e for e, d in enumerate(delta) if d != 0 and e != face_axis]
    for e in sorted(nz, reverse=True):
        red = e - (1 if e > face_axis else 0)
        face = face.take(-1 if delta[e] > 0 else 0, axis=red)
    return face


def touch_pairs(
    faces_a: dict[str, NDArray[Any]],
    faces_b: dict[str, NDArray[Any]],
    delta: tuple[int, ...],
    connectivity: int,
) -> NDArray[Any]:
    """Local-id pairs (a, b) of labels touching across the seam from tile A to B = A + delta."""
    nz = [e for e, d in enumerate(delta) if d != 0]
    if len(nz) > connectivity:
        return np.zeros((0, 2), dtype=np.int64)
    d0 = nz[0]
    fa = faces_a.get(face_key(d0, delta[d0] > 0))
    fb = faces_b.get(face_key(d0, delta[d0] < 0))
    if fa is None or fb is None:
        return np.zeros((0, 2), dtype=np.int64)
    a = _edge(fa, d0, delta)
    b = _edge(fb, d0, tuple(-d for d in delta))
    return touch_pairs_planes(a, b, connectivity - len(nz))


def match_iou(
    a: NDArray[Any], b: NDArray[Any], iou_threshold: float
) -> tuple[NDArray[np.int64], int]:
    """Mutual-best IoU matching of the labels of two segmentations of the same region.

    Returns ``(pairs, n_candidates)``: the matched ``(a, b)`` id pairs (each id at most
    once, IoU >= threshold, each the other's best match) and the number of overlapping
    label pairs considered.
    """
    a = a.ravel()
    b = b.ravel()
    height = int(a.max(initial=0)) + 1
    width = int(b.max(initial=0)) + 1
    if height == 1 or width == 1:
        return np.zeros((0, 2), dtype=np.int64), 0
    if height * width <= 4 * a.size + 65536:
        # compact staged ids: one histogram of every (a, b) combination, background
        # included, gives the intersections and both areas (no masks, no sort)
        joint = a.astype(np.intp)
        joint *= width
        joint += b
        hist = np.bincount(joint, minlength=height * width).reshape(height, width)
        area_a = hist.sum(axis=1)
        area_b = hist.sum(axis=0)
        ia, ib = np.nonzero(hist[1:, 1:])
        pa, pb = ia + 1, ib + 1
        inter = hist[pa, pb]
        n_keys = pa.size
    else:
        both = (a > 0) & (b > 0)
        joint = a[both].astype(np.intp) * width + b[both]
        keys, inter = np.unique(joint, return_counts=True)
        pa, pb = keys // width, keys % width
        area_a = np.bincount(a, minlength=height)
        area_b = np.bincount(b, minlength=width)
        n_keys = keys.size
    if n_keys == 0:
        return np.zeros((0, 2), dtype=np.int64), 0
    iou = inter / (area_a[pa] + area_b[pb] - inter)
    # best partner of each a, and of each b (ties: the smaller id)
    order_a = np.lexsort((pb, -iou, pa))
    first_a = np.ones(order_a.size, bool)
    first_a[1:] = pa[order_a][1:] != pa[order_a][:-1]
    best_a = np.zeros(order_a.size, bool)
    best_a[order_a[first_a]] = True
    order_b = np.lexsort((pa, -iou, pb))
    first_b = np.ones(order_b.size, bool)
    first_b[1:] = pb[order_b][1:] != pb[order_b][:-1]
    best_b = np.zeros(order_b.size, bool)
    best_b[order_b[first_b]] = True
    keep = best_a & best_b & (iou >= iou_threshold)
    return np.stack([pa[keep], pb[keep]], axis=1).astype(np.int64, copy=False), int(n_keys)


def _n_core_ids(plane: NDArray[Any], n: int) -> int:
    """How many distinct ids in 1..n occur in ``plane``."""
    seen = np.bincount(plane.ravel(), minlength=n + 1)[1 : n + 1]
    return int(np.count_nonzero(seen))


def _crop(
    arr: NDArray[Any],
    arr_bounds: Sequence[tuple[int, int]],
    box: Sequence[tuple[int, int]],
) -> NDArray[Any]:
    return arr[tuple(slice(b0 - a0, b1 - a0) for (a0, _), (b0, b1) in zip(arr_bounds, box))]


def overlap_pairs(
    bands_a: dict[str, NDArray[Any]],
    bounds_a: dict[str, Sequence[tuple[int, int]]],
    n_a: int,
    bands_b: dict[str, NDArray[Any]],
    bounds_b: dict[str, Sequence[tuple[int, int]]],
    n_b: int,
    delta: tuple[int, ...],
    iou_threshold: float,
) -> tuple[NDArray[np.int64], dict[str, int]]:
    """IoU-matched local-id pairs between tile A and B = A + delta in their shared halo.

    ``bands_*`` map band keys to arrays, ``bounds_*`` map the same keys to the global
    ``((lo, hi), ...)`` box of each band. Only pairs of two *core* labels (ids <= n) are
    returned; halo-only ids take part in the matching (so a core label is not matched
    to a neighbour's object it merely grazes) but never become nodes.

    Returns ``(pairs, stats)`` with stats ``{"candidates", "merged", "spanning"}``.
    """
    nz = [e for e, d in enumerate(delta) if d != 0]
    d0 = nz[0]
    ka, kb = band_key(d0, delta[d0] > 0), band_key(d0, delta[d0] < 0)
    stats = {"candidates": 0, "merged": 0, "spanning": 0}
    if ka not in bands_a or kb not in bands_b:
        return np.zeros((0, 2), dtype=np.int64), stats
    box_a, box_b = bounds_a[ka], bounds_b[kb]
    box = tuple((max(a0, b0), min(a1, b1)) for (a0, a1), (b0, b1) in zip(box_a, box_b))
    if any(lo >= hi for lo, hi in box):
        return np.zeros((0, 2), dtype=np.int64), stats
    la = _crop(bands_a[ka], box_a, box)
    lb = _crop(bands_b[kb], box_b, box)
    pairs, n_cand = match_iou(la, lb, iou_threshold)
    keep = (pairs[:, 0] <= n_a) & (pairs[:, 1] <= n_b)
    pairs = pairs[keep]
    stats["candidates"] = n_cand
    stats["merged"] = int(pairs.shape[0])
    if len(nz) == 1:
        # core objects of A reaching the outer edge of A's halo (and vice versa) were cut
        # by the halo: the overlap is too small for them.
        outer_a = bands_a[ka].take(-1 if delta[d0] > 0 else 0, axis=d0)
        outer_b = bands_b[kb].take(0 if delta[d0] > 0 else -1, axis=d0)
        stats["spanning"] = _n_core_ids(outer_a, n_a) + _n_core_ids(outer_b, n_b)
    return pairs, stats

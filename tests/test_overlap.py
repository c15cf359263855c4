"""Overlap merge: tiled watershed agrees with whole-image watershed, touching cells stay
apart, per-axis halos are honoured, and seam diagnostics are reported."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockbuster.api import tile_process
from blockbuster.core import TileGrid, instance_f1
from blockbuster.segmenters import watershed
from blockbuster.synthetic import synthetic_nuclei

# tests that run a flow use the session's cluster; the plan and matching tests start nothing
flow = pytest.mark.usefixtures("client")

THRESHOLD = 0.3 * 65535


def seam_objects(labels: np.ndarray, tile_shape) -> np.ndarray:
    """Ids of objects of ``labels`` that cross a tile seam."""
    g = TileGrid(labels.shape, tile_shape)
    owner = np.zeros(labels.shape, np.int64)
    for n in range(g.n_tiles):
        owner[g.core_slices(n)] = n
    fg = labels > 0
    ids = labels[fg]
    tiles = owner[fg]
    order = np.lexsort((tiles, ids))
    ids, tiles = ids[order], tiles[order]
    first = np.r_[True, ids[1:] != ids[:-1]]
    n_tiles_per_id = np.add.reduceat(
        (np.r_[True, (ids[1:] != ids[:-1]) | (tiles[1:] != tiles[:-1])]).astype(int),
        np.flatnonzero(first),
    )
    return ids[first][n_tiles_per_id > 1]


def only(labels, keep):
    return np.where(np.isin(labels, keep), labels, 0)


def compare(tiled, whole, tile_shape):
    allf = instance_f1(tiled, whole)["f1"]
    crossing = seam_objects(whole, tile_shape)
    # tiled objects that overlap a seam-crossing whole-image object
    hit = np.unique(tiled[np.isin(whole, crossing) & (tiled > 0)])
    seamf = instance_f1(only(tiled, hit), only(whole, crossing))["f1"]
    return allf, seamf, len(crossing)


@flow
@pytest.mark.parametrize("ndim", [2, 3])
def test_overlap_merge_matches_whole_image_watershed(ndim, tmp_path):
    if ndim == 2:
        img, _ = synthetic_nuclei((384, 384), seed=2)
        tile, overlap, md = (96, 96), 32, 6  # nuclei diameters are 16-28 px
    else:
        img, _ = synthetic_nuclei((40, 96, 96), radius=(5, 8), seed=2)
        tile, overlap, md = (20, 48, 48), 16, 4
    # a fixed min_distance: the segmenter's automatic one is estimated per tile, which
    # would make the tiles disagree with the whole image for reasons unrelated to seams
    seg = watershed(threshold=THRESHOLD, min_distance=md)
    whole = seg(img)
    results = {}
    for merge in ("overlap", "touch"):
        out, summary = tile_process(
            img,
            seg,
            tile_shape=tile,
            overlap=overlap,
            merge=merge,
            compute=True,
            return_summary=True,
        )
        results[merge] = compare(out, whole, tile)
        if merge == "overlap":
            assert summary["seam_pairs_merged"] > 0
            assert "seams" in summary and summary["seams"]
    (f_all, f_seam, n_cross), (t_all, t_seam, _) = results["overlap"], results["touch"]
    print(
        f"\n{ndim}D: {n_cross} seam-crossing objects; overlap merge F1 all={f_all:.3f} "
        f"seam={f_seam:.3f}; touch merge F1 all={t_all:.3f} seam={t_seam:.3f}"
    )
    assert n_cross >= 10
    assert f_all >= 0.98
    assert f_seam >= 0.95
    assert t_seam < f_seam  # touch merging glues touching nuclei at seams


@flow
def test_per_axis_overlap_is_honoured(tmp_path, counting_label):
    """A (z, y, x) image with a z halo of 0 and a y/x halo of 3: count voxels fn receives."""
    img = np.zeros((4, 20, 20), np.uint8)
    img[:, 5:15, 5:15] = 1
    fn = counting_label()
    tile_process(img, fn, tile_shape=(1, 10, 10), overlap=(0, 3, 3), merge="overlap", compute=True)
    shapes = sorted(eval(s) for s in fn.calls())
    g = TileGrid((4, 20, 20), (1, 10, 10), (0, 3, 3))
    expected = sorted(g.ext_shape(n) for n in range(g.n_tiles))
    assert shapes == expected
    assert all(s[0] == 1 for s in shapes)  # no z-halo read for 1-slice tiles
    assert sum(np.prod(s) for s in shapes) == 4 * 4 * 13 * 13


@flow
def test_overlap_needs_a_halo():
    with pytest.raises(ValueError, match="overlap"):
        tile_process(
            np.ones((8, 8), np.uint8), watershed(threshold=0.5), tile_shape=4, merge="overlap"
        )


def test_auto_merge_picks_overlap_with_a_halo():
    """What ``merge="auto"`` becomes is decided by the plan (tile_process passes ``merge``
    to make_plan unchanged and reports ``plan.merge``): no flow needs to run for it."""
    from blockbuster.core import make_plan
    from blockbuster.io import open_image

    src = open_image(np.zeros((128, 128), np.uint16))
    assert make_plan(src, fn_id="f", tile_shape=64, overlap=16).merge == "overlap"
    assert make_plan(src, fn_id="f", tile_shape=64, overlap=(0, 16)).merge == "overlap"
    assert make_plan(src, fn_id="f", tile_shape=64).merge == "touch"
    assert make_plan(src, fn_id="f", tile_shape=64, overlap=16, merge="touch").merge == "touch"


def _match_iou_reference(a, b, threshold):
    """Mutual-best IoU matching, written the slow obvious way."""
    a, b = a.ravel().astype(int), b.ravel().astype(int)
    ids_a = sorted(set(a[a > 0]))
    ids_b = sorted(set(b[b > 0]))
    area_a = {i: int((a == i).sum()) for i in ids_a}
    area_b = {j: int((b == j).sum()) for j in ids_b}
    inter = {}
    for i, j in zip(a, b):
        if i and j:
            inter[i, j] = inter.get((i, j), 0) + 1
    iou = {k: v / (area_a[k[0]] + area_b[k[1]] - v) for k, v in inter.items()}
    best_a = {
        i: min((k for k in iou if k[0] == i), key=lambda k: (-iou[k], k[1]))
        for i in {k[0] for k in iou}
    }
    best_b = {
        j: min((k for k in iou if k[1] == j), key=lambda k: (-iou[k], k[0]))
        for j in {k[1] for k in iou}
    }
    pairs = sorted(
        k for k in iou if best_a[k[0]] == k and best_b[k[1]] == k and iou[k] >= threshold
    )
    return pairs, len(inter)


@settings(max_examples=150, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    na=st.integers(0, 6),
    nb=st.integers(0, 6),
    seed=st.integers(0, 2**31 - 1),
    threshold=st.sampled_from([0.0, 0.3, 0.5]),
    dtype=st.sampled_from(["u1", "u2"]),
)
def test_match_iou_equals_the_obvious_matching(shape, na, nb, seed, threshold, dtype):
    from blockbuster.core import match_iou

    rng = np.random.default_rng(seed)
    a = rng.integers(0, na + 1, shape).astype(dtype)
    b = rng.integers(0, nb + 1, shape).astype(dtype)
    pairs, n = match_iou(a, b, threshold)
    want, n_want = _match_iou_reference(a, b, threshold)
    assert sorted(map(tuple, pairs.tolist())) == want and n == n_want
    assert pairs.dtype == np.int64

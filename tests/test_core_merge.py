"""Property tests of the merge, run in-process (no cluster): exact agreement with
whole-image connected components for random shapes, tiles, halos and connectivities."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import zarr
from conftest import same_partition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockbuster.core import make_plan
from blockbuster.io import open_image
from blockbuster.worker import run_locally


def label_fn(connectivity):
    def fn(tile):
        return ndi.label(
            tile > 0, structure=ndi.generate_binary_structure(tile.ndim, connectivity)
        )[0]

    return fn


@st.composite
def cases(draw, max_ndim=3):
    ndim = draw(st.integers(2, max_ndim))
    side = 40 if ndim == 2 else 14
    shape = tuple(draw(st.integers(1, side)) for _ in range(ndim))
    tile = tuple(draw(st.integers(1, max(1, s))) for s in shape)
    conn = draw(st.integers(1, ndim))
    density = draw(st.sampled_from([0.1, 0.3, 0.5, 0.7]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    sigma = draw(st.sampled_from([0.0, 0.7, 1.5]))
    img = ndi.gaussian_filter(rng.random(shape), sigma) if sigma else rng.random(shape)
    img = (img > np.quantile(img, 1 - density)).astype(np.uint8)
    overlap = draw(st.integers(0, min(3, *shape)))  # make_plan refuses a halo wider than the image
    return img, tile, conn, overlap


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), sequential=st.booleans())
def test_touch_merge_equals_whole_image_label(case, sequential, tmp_path_factory):
    img, tile, conn, overlap = case
    src = open_image(img)
    plan = make_plan(
        src,
        fn_id="label",
        tile_shape=tile,
        overlap=overlap,
        merge="touch",
        connectivity=conn,
        sequential_labels=sequential,
    )
    out, table = run_locally(
        plan, src, label_fn(conn), str(tmp_path_factory.mktemp("run")), return_table=True
    )
    ref, n = ndi.label(img, structure=ndi.generate_binary_structure(img.ndim, conn))
    assert same_partition(out, ref)
    assert table.n_labels == n
    if sequential:
        assert set(np.unique(out[out > 0]).tolist()) == set(range(1, n + 1))
    assert out.dtype == np.uint32


@settings(max_examples=80, deadline=None)
@given(
    case=cases(),
    read_back=st.booleans(),
    ids=st.sampled_from(["compact", "sparse", "huge"]),
    sequential=st.booleans(),
    chunks_are_tiles=st.booleans(),
    units=st.none() | st.lists(st.integers(1, 4), min_size=3, max_size=3),
    output=st.sampled_from(["shards", "chunk files", "zarr shards"]),
)
def test_merge_from_stored_labels_equals_whole_image_label(
    case, read_back, ids, sequential, chunks_are_tiles, units, output, tmp_path_factory
):
    """The merge alone over per-tile labels read from a zarr store: copied to the staging,
    or (``read_back``) read again from the store when relabelling, with ids that are
    1..n per tile, sparse, or too large for a lookup table; read back, tiles are
    grouped into merge units (``units`` tiles per unit and axis) or not."""
    img, tile, conn, _ = case
    d = tmp_path_factory.mktemp("stored")
    per_tile = np.zeros(img.shape, np.int64)
    st_ = ndi.generate_binary_structure(img.ndim, conn)
    # label each tile independently, with arbitrary (non-compact, repeated) ids
    from blockbuster.core import TileGrid

    g = TileGrid(img.shape, tile)
    for n in range(g.n_tiles):
        sl = g.core_slices(n)
        lab, k = ndi.label(img[sl], structure=st_)
        scale = {"compact": (1, 0), "sparse": (7, 3), "huge": (10**8, 5)}[ids]
        per_tile[sl] = np.where(lab > 0, lab.astype(np.int64) * scale[0] + scale[1], 0)
    path = str(d / "per_tile.zarr")
    # chunks other than the tiles: a tile is read from (parts of) several chunks
    chunks = tile if chunks_are_tiles else tuple(max(1, t // 2 + 1) for t in tile)
    zarr.create_array(store=path, shape=img.shape, chunks=chunks, dtype=np.int64)[...] = per_tile
    src = open_image(path)
    plan = make_plan(
        src,
        fn_id="merge",
        tile_shape=tile,
        connectivity=conn,
        sequential_labels=sequential,
        read_back=read_back,
        units=tuple(units[: img.ndim]) if units else None,
    )
    if read_back and units and any(u > 1 for u in units[: img.ndim]):
        assert plan.unit_tile_shape == plan.out_chunks
    # merge units write their output as shards (ours), chunk files, or shards that zarr
    # writes (where our shard writer does not apply)
    from blockbuster.worker import _tile_ops as tile_ops

    with pytest.MonkeyPatch.context() as mp:
        if output == "zarr shards":
            mp.setattr(tile_ops.ShardWriter, "of", classmethod(lambda cls, arr: None))
        out, table = run_locally(
            plan, src, None, str(d), return_table=True, sharded=output != "chunk files"
        )
    ref, n = ndi.label(img, structure=st_)
    assert same_partition(out, ref)
    assert table.n_labels == n
    if sequential:
        assert set(np.unique(out[out > 0]).tolist()) == set(range(1, n + 1))


def test_many_tiles_diagonal_chain(tmp_path):
    """A diagonal line crosses tile corners only: merged with full connectivity, not faces."""
    img = np.eye(30, dtype=np.uint8)
    src = open_image(img)
    for conn, expected in ((1, 30), (2, 1)):
        plan = make_plan(src, fn_id="l", tile_shape=(1, 1), connectivity=conn)
        out = run_locally(plan, src, label_fn(conn), str(tmp_path / f"c{conn}"))
        assert len(np.unique(out)) - 1 == expected


def test_overlap_equal_halo_and_tile_sizes(tmp_path):
    img = np.ones((9, 9), np.uint8)
    src = open_image(img)
    plan = make_plan(src, fn_id="l", tile_shape=(3, 3), overlap=5, merge="touch")
    out = run_locally(plan, src, label_fn(1), str(tmp_path))
    assert np.unique(out).tolist() == [1]

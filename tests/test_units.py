"""Merge units (core/units.py): how tiles are grouped, and what a unit stages."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from blockbuster.core import MIN_TILES_PER_UNIT, SMALL_TILE_FRACTION, make_plan, unit_tiles
from blockbuster.errors import InputChangedError, InvalidParameterError
from blockbuster.io import Staging, open_image
from blockbuster.worker import relabel_tiles, segment_tiles


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    ndim=st.integers(1, 3),
    budget=st.sampled_from([64, 4096, 1 << 22]),
    min_units=st.integers(1, 64),
)
def test_unit_tiles_keeps_to_its_limits(data, ndim, budget, min_units):
    shape = tuple(data.draw(st.integers(1, 5000)) for _ in range(ndim))
    tile = tuple(data.draw(st.integers(1, s)) for s in shape)
    per = unit_tiles(shape, tile, unit_voxels=budget, min_units=min_units)
    assert len(per) == ndim and all(p >= 1 for p in per)
    if per == (1,) * ndim:
        return
    n_tiles = [math.ceil(s / t) for s, t in zip(shape, tile)]
    assert math.prod(per) >= MIN_TILES_PER_UNIT
    assert math.prod(tile) <= budget // SMALL_TILE_FRACTION
    assert math.prod(tile) * math.prod(per) <= budget
    assert all(p <= n for p, n in zip(per, n_tiles))
    assert math.prod(math.ceil(n / p) for n, p in zip(n_tiles, per)) >= min_units


def test_units_parameter_is_checked():
    src = open_image(np.zeros((8, 8), np.int32))
    with pytest.raises(InvalidParameterError, match="units="):
        make_plan(src, fn_id="m", tile_shape=(2, 2), read_back=True, units=(2, 0))
    with pytest.raises(InvalidParameterError, match="units="):
        make_plan(src, fn_id="m", tile_shape=(2, 2), read_back=True, units="many")
    plan = make_plan(src, fn_id="m", tile_shape=(2, 2), read_back=True, units=(2, 4))
    assert plan.grid.tile_shape == (4, 8) and plan.out_chunks == (2, 2)
    # the units are part of what a run is: another grouping is another staging, even
    # where the unit grid's tile shape is the same (4 x 8 tiles of 4 x 8, no units)
    plain = make_plan(src, fn_id="m", tile_shape=(4, 8), read_back=True, units=None)
    assert plain.grid.tile_shape == plan.grid.tile_shape and plain.unit_tile_shape is None
    assert plain.run_key != plan.run_key
    other = make_plan(src, fn_id="m", tile_shape=(2, 2), read_back=True, units=(4, 2))
    assert other.run_key != plan.run_key


def test_a_unit_stages_one_record_and_joins_its_inner_seams(tmp_path):
    img = np.zeros((12, 12), np.uint8)
    img[2:10, 5] = 1  # one line across three tiles of 4 x 4
    img[1, 1] = 1
    per_tile = np.zeros(img.shape, np.int64)
    for i in range(0, 12, 4):
        for j in range(0, 12, 4):
            per_tile[i : i + 4, j : j + 4] = ndi.label(img[i : i + 4, j : j + 4])[0]
    path = str(tmp_path / "t.zarr")
    zarr.create_array(store=path, shape=img.shape, chunks=(4, 4), dtype=np.int64)[...] = per_tile
    src = open_image(path)
    plan = make_plan(src, fn_id="m", tile_shape=(4, 4), read_back=True, units=(3, 3))
    plan = plan.__class__(**{**plan.__dict__, "staging_root": str(tmp_path / "st")})
    Staging(plan.staging_root).prepare({"run_key": plan.run_key})
    assert plan.grid.n_tiles == 1
    (rec,) = segment_tiles(plan, None, [0], reader=src.reader)
    assert rec["unit_counts"] == [1, 1, 0, 0, 1, 0, 0, 1, 0]
    assert rec["n_labels"] == 2 and rec["unit_pairs"] == 2
    assert Staging(plan.staging_root).finished_tiles() == [0]
    # relabelling reads the tiles again: an id the index did not see is an error
    per_tile[8, 4] = 7  # in tile (2, 1), which had only id 1
    zarr.open_array(path, mode="r+")[...] = per_tile
    out = str(tmp_path / "o.zarr")
    zarr.create_array(
        store=out, shape=img.shape, chunks=plan.out_chunks, dtype=np.uint32, fill_value=0
    )
    with pytest.raises(InputChangedError, match="input changed"):
        relabel_tiles(plan, [0], [np.array([0, 1, 2], np.uint32)], out, "t", src.reader)


def test_negative_labels_in_a_unit_name_the_tile(tmp_path):
    from blockbuster.errors import TileOutputError

    per_tile = np.zeros((8, 8), np.int32)
    per_tile[5, 6] = -3  # in the tile at (4, 4)
    path = str(tmp_path / "t.zarr")
    zarr.create_array(store=path, shape=(8, 8), chunks=(4, 4), dtype=np.int32)[...] = per_tile
    src = open_image(path)
    plan = make_plan(src, fn_id="m", tile_shape=(4, 4), read_back=True, units=(2, 2))
    plan = plan.__class__(**{**plan.__dict__, "staging_root": str(tmp_path / "st")})
    Staging(plan.staging_root).prepare({"run_key": plan.run_key})
    with pytest.raises(TileOutputError, match=r"negative labels \(min -3\).*origin \(4, 4\)"):
        segment_tiles(plan, None, [0], reader=src.reader)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), ndim=st.integers(2, 3))
def test_unit_samples_are_the_strided_pixels_of_the_unit(data, ndim):
    """A unit's preview samples, gathered from its tile-major array at once, are the
    pixels a strided view of the image keeps (for 3D, of one plane), wherever the unit
    starts and however its tiles are clipped at the image's edge."""
    from blockbuster.core import unit_samples

    tile = tuple(data.draw(st.integers(1, 6)) for _ in range(ndim))
    layers = tuple(data.draw(st.integers(1, 4)) for _ in range(ndim))
    origin = tuple(data.draw(st.integers(0, 20)) * t for t in tile)
    # the unit's extent: whole tiles, the last one maybe clipped (the image ends there)
    size = tuple((n - 1) * t + data.draw(st.integers(1, t)) for n, t in zip(layers, tile))
    bounds = tuple((o, o + s) for o, s in zip(origin, size))
    step = data.draw(st.integers(1, 7))
    plane = (
        data.draw(st.integers(max(0, origin[0] - 2), origin[0] + size[0] + 2))
        if ndim == 3
        else None
    )
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    spatial = rng.integers(1, 1000, size).astype(np.int32)
    # tile-major: layers + tile shape, the part past the unit's end holds junk (-1)
    padded = np.full(tuple(n * t for n, t in zip(layers, tile)), -1, np.int32)
    padded[tuple(slice(0, s) for s in size)] = spatial
    split = [x for n, t in zip(layers, tile) for x in (n, t)]
    order = [2 * d for d in range(ndim)] + [2 * d + 1 for d in range(ndim)]
    tm = padded.reshape(split).transpose(order)
    got = unit_samples(tm, bounds, tile, step, plane)
    # the oracle: the image's strided pixels that fall inside the unit
    img = np.zeros(tuple(o + s for o, s in zip(origin, size)), np.int32)
    img[tuple(slice(o, None) for o in origin)] = spatial
    if plane is not None:
        if not origin[0] <= plane < origin[0] + size[0]:
            assert got is None
            return
        img, lo2 = img[plane], origin[1:]
    else:
        lo2 = origin
    strided = img[tuple(slice(None, None, step) for _ in lo2)]
    at = tuple(-(-o // step) for o in lo2)
    want = strided[tuple(slice(a, None) for a in at)]
    if want.size == 0:
        assert got is None
        return
    assert got is not None
    assert got[0] == at
    np.testing.assert_array_equal(got[1], want)


def _as_partition(a):
    """Each voxel's label, renumbered in order of first appearance (0 stays 0)."""
    flat = a.ravel()
    _, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    out = rank[inverse].reshape(a.shape)
    return np.where(a == 0, 0, out + 1)


@settings(max_examples=120, deadline=None)
@given(
    data=st.data(),
    ndim=st.integers(2, 3),
    full=st.booleans(),
    big_ids=st.booleans(),
)
def test_a_unit_joins_its_tiles_as_whole_image_labelling_does(data, ndim, full, big_ids):
    """index_unit's join over every inner seam (all seams along an axis in one pass)
    against scipy.ndimage.label of the whole unit, at every connectivity: the unit's
    ids of its voxels are the same partition. Dense foreground makes diagonal contacts
    common, the case where two seams laid end to end could wrongly touch."""
    from blockbuster.core._merge_units import index_unit

    tile = tuple(data.draw(st.integers(1, 5)) for _ in range(ndim))
    layers = tuple(data.draw(st.integers(1, 4)) for _ in range(ndim))
    # the unit may end inside its last tiles (the image's edge)
    shape = tuple(
        t * n if full else data.draw(st.integers(t * (n - 1) + 1, t * n))
        for t, n in zip(tile, layers)
    )
    conn = data.draw(st.integers(1, ndim))
    seed = data.draw(st.integers(0, 2**32 - 1))
    fg = np.random.default_rng(seed).random(shape) < 0.55
    structure = ndi.generate_binary_structure(ndim, conn)
    per_tile = np.zeros(shape, np.int64)
    for cell in np.ndindex(*layers):
        sl = tuple(slice(c * t, (c + 1) * t) for c, t in zip(cell, tile))
        lab = ndi.label(fg[sl], structure)[0]
        if big_ids:  # ids not 1..k, far apart: the one-tile-at-a-time path
            lab = np.where(lab > 0, lab.astype(np.int64) * 10**9 + 7, 0)
        per_tile[sl] = lab

    def read_into(tb, out):
        out[tuple(slice(0, b - a) for a, b in tb)] = per_tile[tuple(slice(a, b) for a, b in tb)]

    read_into.dtype = per_tile.dtype
    bounds = tuple((0, s) for s in shape)
    rec, arrays = index_unit(
        bounds, tile, conn, read_into, 0, lambda name, shp, dt: np.zeros(shp, dt)
    )
    oracle = ndi.label(fg, structure)[0]
    assert rec["n_labels"] == oracle.max()
    # each voxel's node: its tile's nodes are consecutive, in increasing id order
    got = np.zeros(shape, np.int64)
    offset = 0
    for cell, k in zip(np.ndindex(*layers), rec["unit_counts"]):
        sl = tuple(slice(c * t, (c + 1) * t) for c, t in zip(cell, tile))
        ids = np.unique(per_tile[sl])
        ids = ids[ids > 0]
        assert ids.size == k
        node = np.searchsorted(ids, per_tile[sl]) + offset + 1
        got[sl] = np.where(per_tile[sl] > 0, arrays["comp"][node] if k else 0, 0)
        offset += k
    np.testing.assert_array_equal(_as_partition(got), _as_partition(oracle))

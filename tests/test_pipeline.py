"""End to end through Prefect's real engine on a real LocalCluster of worker processes."""

from __future__ import annotations

import os

import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi
import zarr
from conftest import CountingLabel, blobs, same_partition

from blockbuster.api import merge_tile_labels, tile_process
from blockbuster.errors import InvalidParameterError, TileFunctionError, TileOutputError

# tests that run a flow use the session's cluster; validation and pure tests start nothing
flow = pytest.mark.usefixtures("client")


def oracle(img, conn):
    return ndi.label(img > 0, structure=ndi.generate_binary_structure(img.ndim, conn))


@flow
@pytest.mark.parametrize(
    "shape, tile, conn, density, seed",
    [
        ((45, 37), (10, 13), 2, 0.45, 11),  # uneven edge tiles, diagonal seams: 17 objects
        ((12, 15, 16), (5, 8, 7), 3, 0.2, 10),  # 3D, corners across 8 tiles: 14 objects
    ],
)
def test_tile_process_equals_whole_image_label(shape, tile, conn, density, seed, counting_label):
    """Through the real flow on the cluster, twice (2D and 3D): the merge's correctness
    over random shapes, tiles and connectivities is the in-process property test's
    (test_core_merge, 150 examples); this checks the flow wires the same stages."""
    img = blobs(shape, density=density, sigma=1.0, seed=seed)
    fn = counting_label(connectivity=conn)
    out = tile_process(img, fn, tile_shape=tile, connectivity=conn, compute=True)
    ref, n = oracle(img, conn)
    assert n > 10 and same_partition(out, ref)
    n_tiles = int(np.prod([-(-s // t) for s, t in zip(shape, tile)]))
    assert len(fn.calls()) == n_tiles  # fn ran exactly once per tile


@flow
def test_zarr_input_sequential_labels_and_output(tmp_path, counting_label):
    img = blobs((96, 80), seed=3)
    src = str(tmp_path / "img.zarr")
    zarr.create_array(store=src, shape=img.shape, chunks=(32, 32), dtype=img.dtype)[...] = img
    fn = counting_label(connectivity=2)
    out_path = str(tmp_path / "labels.zarr")
    res, summary = tile_process(
        src,
        fn,
        tile_shape=(32, 40),
        connectivity=2,
        sequential_labels=True,
        write_to=out_path,
        return_summary=True,
    )
    assert isinstance(res, da.Array)
    lab = res.compute()
    ref, n = oracle(img, 2)
    assert same_partition(lab, ref)
    assert sorted(np.unique(lab[lab > 0]).tolist()) == list(range(1, n + 1))
    arr = zarr.open_array(out_path, mode="r")
    assert arr.chunks == (32, 40) and arr.dtype == np.uint32
    assert arr.attrs["blockbuster"]["complete"] is True
    assert summary["labels_after_merge"] == n
    per_tile = sum(
        oracle(img[i : i + 32, j : j + 40], 2)[1]
        for i in range(0, 96, 32)
        for j in range(0, 80, 40)
    )
    assert summary["labels_before_merge"] == per_tile > n
    assert len(fn.calls()) == 3 * 2
    # staging is removed after success
    assert not os.path.exists(summary["staging"])
    # the same call again finds the output complete and runs nothing
    tile_process(
        src, fn, tile_shape=(32, 40), connectivity=2, sequential_labels=True, write_to=out_path
    )
    assert len(fn.calls()) == 6


@flow
def test_dask_input_with_channel_axis(counting_label):
    img = blobs((40, 50), seed=5)
    stack = np.stack([img, np.zeros_like(img)], axis=-1)  # channels last
    x = da.from_array(stack, chunks=(20, 25, 2))

    class FirstChannel(CountingLabel):
        def __call__(self, tile):
            assert tile.ndim == 3 and tile.shape[-1] == 2
            return super().__call__(tile[..., 0])

    fn = counting_label()
    fn = FirstChannel(fn.calls_dir)
    out = tile_process(x, fn, tile_shape=(16, 16, 2), channel_axis=-1, compute=True)
    assert out.shape == img.shape
    assert same_partition(out, oracle(img, 1)[0])


@flow
def test_merge_tile_labels_dask_blocks_computed_once(tmp_path, counting_label):
    img = blobs((64, 64), seed=7)
    fn = counting_label(connectivity=1)
    x = da.from_array(img, chunks=(16, 16))
    per_tile = x.map_blocks(fn, dtype=np.int32, meta=np.empty((0, 0), np.int32))
    out = merge_tile_labels(per_tile, write_to=str(tmp_path / "m.zarr"), compute=True)
    assert same_partition(out, oracle(img, 1)[0])
    assert len(fn.calls()) == 16


@flow
@pytest.mark.parametrize("scale", [1, 5])
def test_merge_tile_labels_zarr_path(tmp_path, scale):
    """Stored labels are read back when relabelling: ids 1..n per tile need nothing
    staged but the faces, sparse ids (scale 5) also their sorted ids."""
    img = blobs((60, 70, 3)[:2], seed=11)
    per_tile = np.zeros(img.shape, np.uint16)
    for i in range(0, 60, 20):
        for j in range(0, 70, 30):
            per_tile[i : i + 20, j : j + 30] = ndi.label(img[i : i + 20, j : j + 30])[0] * scale
    grp = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    grp.create_array("tiles", shape=img.shape, chunks=(20, 30), dtype=np.uint16)[...] = per_tile
    out = merge_tile_labels(
        str(tmp_path / "g.zarr"), input_component="tiles", sequential_labels=True, compute=True
    )
    ref, n = oracle(img, 1)
    assert same_partition(out, ref) and out.max() == n


@flow
def test_merge_tile_labels_of_small_tiles_in_merge_units(tmp_path):
    """256 stored tiles of 16 x 16: indexed and relabelled in merge units of several
    tiles (core/units.py) where this machine allows; the same labels, chunked by tiles."""
    from blockbuster.core import make_plan
    from blockbuster.io import open_image

    img = blobs((256, 256), density=0.5, sigma=1.5, seed=4)
    per_tile = np.zeros(img.shape, np.int32)
    for i in range(0, 256, 16):
        for j in range(0, 256, 16):
            lab = ndi.label(img[i : i + 16, j : j + 16], structure=np.ones((3, 3)))[0]
            per_tile[i : i + 16, j : j + 16] = np.where(lab > 0, lab * 3 + 1, 0)  # sparse ids
    path = str(tmp_path / "tiles.zarr")
    zarr.create_array(store=path, shape=img.shape, chunks=(16, 16), dtype=np.int32)[...] = per_tile
    plan = make_plan(open_image(path), fn_id="m", tile_shape=(16, 16), read_back=True)
    out_path = str(tmp_path / "merged.zarr")
    out, summary = merge_tile_labels(path, write_to=out_path, connectivity=2, return_summary=True)
    ref, n = oracle(img, 2)
    assert same_partition(out.compute(), ref) and summary["labels_after_merge"] == n
    assert zarr.open_array(out_path, mode="r").chunks == (16, 16)
    assert summary["n_tiles"] == 256 and summary["tile_shape"] == [16, 16]
    tiles_labels = sum(
        len(np.unique(per_tile[i : i + 16, j : j + 16])) - 1
        for i in range(0, 256, 16)
        for j in range(0, 256, 16)
    )
    assert summary["labels_before_merge"] == tiles_labels
    if plan.unit_tile_shape is not None:  # units on this machine
        assert summary["merge_units"]["n_units"] == plan.grid.n_tiles < 256
        # one shard file per unit, one inner chunk per tile
        stored = zarr.open_array(out_path, mode="r")
        assert stored.shards == plan.out_shards == plan.grid.tile_shape
        n_files = sum(len(f) for _, _, f in os.walk(os.path.join(out_path, "c")))
        assert 0 < n_files <= plan.grid.n_tiles
    else:  # pragma: no cover - many CPUs
        assert "merge_units" not in summary


@flow
@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda t: t.astype(float), "dtype float64"),
        (lambda t: np.zeros((2, 2), np.int32), "shape"),
        (lambda t: -np.ones(t.shape, np.int32), "negative"),
    ],
)
def test_bad_fn_output_names_the_tile(bad, match, tmp_path):
    out_path = tmp_path / "out.zarr"
    with pytest.raises(TileOutputError, match=match) as exc:
        tile_process(
            np.ones((20, 20), np.uint8),
            bad,
            tile_shape=(10, 10),
            retries=0,
            write_to=str(out_path),
        )
    assert "tile " in str(exc.value) and "origin" in str(exc.value)
    assert not out_path.exists()  # nothing that looks like an output


@flow
def test_fn_exception_names_tile_and_original_error(tmp_path):
    def boom(tile):
        raise KeyError("no such model")

    with pytest.raises(TileFunctionError, match="KeyError") as exc:
        tile_process(np.ones((8, 8), np.uint8), boom, tile_shape=(4, 4), retries=0)
    assert "origin" in str(exc.value)


@pytest.mark.parametrize("tile_shape", [(0, 4), (4,), (4, 4, 4), "big", (2.5, 4), -3])
def test_bad_tile_shape_is_value_error(tile_shape):
    with pytest.raises(ValueError, match="tile_shape"):
        tile_process(
            np.ones((8, 8), np.uint8), lambda t: t.astype(np.int32), tile_shape=tile_shape
        )


def test_other_bad_parameters():
    img = np.ones((8, 8), np.uint8)
    f = lambda t: t.astype(np.int32)  # noqa: E731
    with pytest.raises(InvalidParameterError, match="connectivity"):
        tile_process(img, f, tile_shape=4, connectivity=3)
    with pytest.raises(InvalidParameterError, match="overlap"):
        tile_process(img, f, tile_shape=4, merge="overlap")
    with pytest.raises(InvalidParameterError, match="merge"):
        tile_process(img, f, tile_shape=4, merge="glue")
    with pytest.raises(InvalidParameterError, match="fn"):
        tile_process(img, "label", tile_shape=4)


def test_uint64_when_labels_exceed_uint32():
    from blockbuster.core import MergeTable

    t = MergeTable.build([2**32 - 1, 5], np.zeros((0, 2), np.int64))
    assert t.dtype == np.uint64 and t.max_label == 2**32 + 4
    s = MergeTable.build([2**32 - 1, 5], np.array([[2**32 - 1, 2**32]]), sequential=True)
    assert s.n_labels == 2**32 + 3 and s.dtype == np.uint64

"""Empty tiles, automatic tile shapes, and cluster checks."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import scipy.ndimage as ndi
import zarr
from conftest import CountingLabel, same_partition

from blockbuster.api import choose_tile_shape, estimate_empty_tiles, tile_process
from blockbuster.cluster import make_local_cluster
from blockbuster.errors import ClusterError, NoGPUError
from blockbuster.io import open_image
from blockbuster.synthetic import sparse_nuclei


def true_empty(img, tile, threshold):
    gy, gx = -(-img.shape[0] // tile[0]), -(-img.shape[1] // tile[1])
    return np.array(
        [
            [
                not (
                    img[i * tile[0] : (i + 1) * tile[0], j * tile[1] : (j + 1) * tile[1]]
                    > threshold
                ).any()
                for j in range(gx)
            ]
            for i in range(gy)
        ]
    )


@pytest.mark.parametrize("outside", ["zero", "noise"])
def test_estimated_empty_fraction_is_close_to_truth(outside, tmp_path):
    img, _ = sparse_nuclei((512, 512), corner_fraction=0.3, seed=1, outside=outside)
    path = str(tmp_path / "sparse.zarr")
    zarr.create_array(store=path, shape=img.shape, chunks=(64, 64), dtype=img.dtype)[...] = img
    r = estimate_empty_tiles(path, (64, 64))
    truth = true_empty(img, (64, 64), r["threshold"])
    # the decision per tile is exact for the threshold chosen
    assert np.array_equal(r["empty"], truth)
    # and the estimated threshold separates objects from background: the empty fraction
    # is that of the tiles holding no object at all
    objects = true_empty(img, (64, 64), 0.45 * 65535)
    assert abs(r["empty_fraction"] - objects.mean()) <= 0.05
    assert r["n_tiles"] == 64 and r["empty"].shape == (8, 8)
    assert "sample" in r["threshold_method"] or "chunks" in r["threshold_method"]


def test_skip_empty_never_calls_fn_on_empty_tiles(tmp_path, client):
    img, _ = sparse_nuclei((256, 256), corner_fraction=0.3, seed=3)
    d = tmp_path / "calls"
    d.mkdir()
    fn = CountingLabel(str(d), threshold=1000)
    path = str(tmp_path / "img.zarr")
    zarr.create_array(store=path, shape=img.shape, chunks=(32, 32), dtype=img.dtype)[...] = img
    out = str(tmp_path / "labels.zarr")
    lab, s = tile_process(
        path,
        fn,
        tile_shape=(32, 32),
        skip_empty=True,
        empty_threshold=1000,
        write_to=out,
        compute=True,
        return_summary=True,
    )
    non_empty = (~true_empty(img, (32, 32), 1000)).sum()
    assert len(fn.calls()) == non_empty < 64
    assert s["n_skipped"] == 64 - non_empty
    assert same_partition(lab, ndi.label(img > 1000)[0])
    # no chunk is stored for skipped tiles
    import os

    chunk_files = [f for _, _, fs in os.walk(os.path.join(out, "c")) for f in fs]
    assert len(chunk_files) <= non_empty


def test_auto_tile_shape_respects_budget_and_chunks(tmp_path):
    path = str(tmp_path / "img.zarr")
    zarr.create_array(store=path, shape=(4096, 3000), chunks=(128, 100), dtype=np.uint16)
    src = open_image(path)

    class Fn:
        memory_factor = 6.0

        def __call__(self, t):
            return t

    with dask.config.set({"blockbuster.worker-memory": "64MiB"}):
        shape, why = choose_tile_shape(src, Fn(), overlap=8, use_gpu=False)
    assert shape[0] % 128 == 0 and (shape[1] % 100 == 0 or shape[1] == 3000)
    assert why["working_set_bytes"] <= 32 * 2**20  # half the budget, the safety
    bpv = 2 * 7 + 12
    assert (shape[0] + 16) * (shape[1] + 16) * bpv <= 32 * 2**20
    with dask.config.set({"blockbuster.worker-memory": "256MiB"}):
        bigger, _ = choose_tile_shape(src, Fn(), overlap=8, use_gpu=False)
    assert np.prod(bigger) > np.prod(shape)


def test_gpu_cluster_without_gpu_is_a_clear_error(nvml):
    # NVML answers "no GPU" whatever the host has: with a real GPU this test used to
    # start (and leak) a GPU cluster instead of checking the error
    with pytest.raises(NoGPUError, match="no GPU"):
        make_local_cluster(use_gpu=True)


def test_in_process_client_is_refused():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(processes=False, n_workers=1, dashboard_address=":0")
    c = Client(cluster, set_as_default=False)
    try:
        from blockbuster.cluster import check_client

        with pytest.raises(ClusterError, match="processes"):
            check_client(c)
        with c.as_current():
            with pytest.raises(ClusterError, match="processes=True"):
                tile_process(np.ones((8, 8), np.uint8), lambda t: t.astype(np.int32), tile_shape=4)
    finally:
        c.close()
        cluster.close()

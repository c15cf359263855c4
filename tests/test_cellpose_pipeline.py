"""The real Cellpose package through tile_process on a LocalCluster, on CPU, with a small
randomly initialised network saved to a temporary file (nothing is downloaded)."""

from __future__ import annotations

import numpy as np
import pytest

cellpose = pytest.importorskip("cellpose", reason="the cellpose extra is not installed")

from blockbuster.api import tile_process
from blockbuster.plugins.cellpose import (
    cellpose_fn,
    model_loads,
)

pytestmark = pytest.mark.usefixtures("client")


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    from blockbuster.plugins.cellpose import cellpose_major_version

    if cellpose_major_version() >= 4:
        pytest.skip(
            "the end-to-end test builds a Cellpose 3 network; Cellpose 4 is "
            "covered by tests/test_cellpose_plugin.py"
        )
    import torch
    from cellpose.resnet_torch import CPnet

    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("model") / "random_cp3")
    CPnet([2, 32, 64, 128, 256], 3, sz=3, diam_mean=30.0).save_model(path)
    return path


def disks(shape, seed=0):
    rng = np.random.default_rng(seed)
    img = np.zeros(shape, np.float32)
    grid = np.indices(shape)
    for _ in range(12 if len(shape) == 2 else 6):
        c = [rng.integers(8, s - 8) for s in shape]
        r2 = sum((g - ci) ** 2 for g, ci in zip(grid, c))
        img[r2 < 36] = 1.0
    return (img * 1000).astype(np.uint16)


@pytest.mark.parametrize("ndim", [2, 3])
def test_cellpose_through_tile_process(ndim, random_model, client):
    shape = (96, 96) if ndim == 2 else (24, 48, 48)
    tile = (48, 48) if ndim == 2 else (12, 48, 24)
    fn = cellpose_fn(
        pretrained_model=random_model,
        diameter=30,
        bsize=64,
        flow_threshold=0,
        cellprob_threshold=-3,
    )
    lab, summary = tile_process(
        disks(shape), fn, tile_shape=tile, overlap=8, compute=True, return_summary=True
    )
    loads = client.run(model_loads)
    assert lab.shape == shape and lab.dtype in (np.uint32, np.uint64)
    assert lab.min() == 0
    assert summary["n_tiles"] == 4 and summary["n_skipped"] == 0
    # the model is loaded at most once per worker process (this session uses one model),
    # never once per tile
    assert all(v <= 1 for v in loads.values()), loads
    assert 1 <= sum(loads.values()) < summary["n_tiles"] or len(loads) >= 4

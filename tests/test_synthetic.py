"""Tests of blockbuster.synthetic: synthetic nuclei images and their true labels."""

from __future__ import annotations

import functools
import tracemalloc

import numpy as np
import pytest
import scipy.ndimage as ndi
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from blockbuster.errors import InvalidParameterError
from blockbuster.synthetic import (
    nuclei_scene,
    sparse_nuclei,
    synthetic_nuclei,
    write_synthetic_zarr,
)


@pytest.mark.parametrize("shape, radius", [((160, 192), (8, 14)), ((40, 64, 72), (5, 8))])
def test_shapes_dtypes_and_labels(shape, radius):
    image, truth = synthetic_nuclei(shape, radius=radius, seed=0)
    assert image.shape == truth.shape == shape
    assert image.dtype == np.uint16 and truth.dtype == np.uint32
    ids = np.unique(truth)
    n = int(truth.max())
    assert n > 5
    assert ids.tolist() == list(range(n + 1))  # every nucleus owns voxels, ids 1..n
    inside, outside = image[truth > 0].astype(float), image[truth == 0].astype(float)
    assert inside.mean() > 3 * outside.mean()
    # nuclei lie fully inside the canvas: the border is background
    border = np.ones(shape, bool)
    border[tuple(slice(1, -1) for _ in shape)] = False
    assert not truth[border].any()


def test_deterministic_for_a_seed():
    a = synthetic_nuclei((128, 128), seed=5)
    b = synthetic_nuclei((128, 128), seed=5)
    c = synthetic_nuclei((128, 128), seed=6)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_dtypes_and_background_bound(dtype):
    scene = nuclei_scene((128, 128), seed=1, dtype=dtype)
    image, truth = scene.render()
    assert image.dtype == np.dtype(dtype)
    if np.issubdtype(np.dtype(dtype), np.floating):
        assert 0.0 <= image.min() and image.max() <= 1.0
    # far from every nucleus, values are background: bounded by background_max
    far = ~ndi.binary_dilation(truth > 0, iterations=3)
    assert image[far].max() <= scene.background_max + 1e-6
    assert image[far].min() >= (scene.background - 4 * scene.noise) * scene.scale - 1e-6
    # nucleus cores are brighter than any background voxel
    core = ndi.binary_erosion(truth > 0, iterations=2)
    assert image[core].min() > scene.background_max


def test_touching_clusters_merge_under_threshold():
    image, truth = synthetic_nuclei((256, 256), seed=0, touching=True)
    n = int(truth.max())
    n_components = ndi.label(truth > 0)[1]
    assert n_components < 0.5 * n  # most nuclei touch a neighbour


def test_separate_nuclei_do_not_touch():
    image, truth = synthetic_nuclei((256, 256), seed=0, touching=False)
    n = int(truth.max())
    full = ndi.generate_binary_structure(2, 2)
    assert ndi.label(truth > 0, structure=full)[1] == n
    # also in the image: each nucleus is its own bright blob
    blobs = ndi.label(image > image.max() * 0.3, structure=full)[1]
    assert blobs == n


def test_n_nuclei_is_respected():
    _, truth = synthetic_nuclei((256, 256), n_nuclei=12, seed=2)
    assert truth.max() == 12


@functools.cache
def _scene_2d():
    scene = nuclei_scene((96, 80), radius=(4, 8), seed=4)
    return scene, scene.render()


@given(a0=st.integers(0, 95), a1=st.integers(1, 96), b0=st.integers(0, 79), b1=st.integers(1, 80))
@settings(max_examples=25, deadline=None)
def test_any_region_renders_like_the_whole(a0, a1, b0, b1):
    scene, (image, truth) = _scene_2d()
    region = (slice(a0, a1), slice(b0, b1))
    part, part_truth = scene.render(region)
    assert np.array_equal(part, image[region])
    assert np.array_equal(part_truth, truth[region])


def test_3d_region_and_slab_rendering_agree(monkeypatch):
    import blockbuster.synthetic._scene as syn

    scene = nuclei_scene((24, 40, 48), radius=(4, 6), seed=8)
    image, truth = scene.render()
    region = (slice(5, 19), slice(3, 37), slice(10, 48))
    part, part_truth = scene.render(region)
    assert np.array_equal(part, image[region]) and np.array_equal(part_truth, truth[region])
    # rendering in small slabs (as for huge images) gives the same pixels
    monkeypatch.setattr(syn, "_RENDER_BLOCK_VOXELS", 1000)
    image2, truth2 = scene.render()
    assert np.array_equal(image, image2) and np.array_equal(truth, truth2)


def test_rendering_a_region_of_a_huge_canvas_is_memory_sane():
    scene = nuclei_scene((100_000, 100_000), n_nuclei=300, seed=0)
    assert scene.n_nuclei == 300
    tracemalloc.start()
    try:
        image, truth = scene.render((slice(5000, 5256), slice(7000, 7256)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.shape == (256, 256)
    assert peak < 20 * 2**20  # a few MiB, nothing canvas-sized


def test_sparse_nuclei_zero_outside_corner():
    image, truth = sparse_nuclei((192, 160), corner_fraction=0.5, radius=(4, 7), seed=3)
    assert image.dtype == np.uint16
    assert image[96:, :].max() == 0 and image[:, 80:].max() == 0
    assert truth[96:, :].max() == 0 and truth[:, 80:].max() == 0
    assert truth[:96, :80].max() > 3
    assert image[:96, :80].min() > 0  # the corner has the noisy background


def test_sparse_nuclei_noise_outside_stays_below_bound():
    image, truth = sparse_nuclei(
        (128, 128), corner_fraction=0.25, seed=1, outside="noise", radius=(3, 5)
    )
    bound = 14418  # documented: ceil((0.1 + 4 * 0.03) * 65535)
    outside = np.ones(image.shape, bool)
    outside[:32, :32] = False
    assert 0 < image[outside].max() <= bound
    assert truth[outside].max() == 0


def test_sparse_nuclei_3d():
    image, truth = sparse_nuclei((48, 64, 64), corner_fraction=0.5, radius=(3, 5), seed=0)
    assert image[24:].max() == 0 and image[:, 32:].max() == 0 and image[:, :, 32:].max() == 0
    assert truth[:24, :32, :32].max() > 0


def test_write_synthetic_zarr_matches_in_memory(tmp_path):
    path = write_synthetic_zarr(
        tmp_path / "img.zarr",
        (100, 90),
        (32, 40),
        seed=7,
        labels_path=tmp_path / "truth.zarr",
        radius=(5, 9),
    )
    z = zarr.open_array(path, mode="r")
    assert z.shape == (100, 90) and z.chunks == (32, 40) and z.dtype == np.uint16
    assert z.metadata.zarr_format == 3
    image, truth = synthetic_nuclei((100, 90), seed=7, radius=(5, 9))
    assert np.array_equal(z[...], image)
    assert np.array_equal(zarr.open_array(tmp_path / "truth.zarr", mode="r")[...], truth)
    assert z.attrs["blockbuster_synthetic"]["n_nuclei"] == int(truth.max())


def test_write_sparse_zarr_stores_no_empty_chunks(tmp_path):
    path = write_synthetic_zarr(
        tmp_path / "sparse.zarr",
        (128, 128),
        (32, 32),
        seed=0,
        kind="sparse",
        corner_fraction=0.25,
        radius=(3, 5),
    )
    z = zarr.open_array(path, mode="r")
    image, _ = sparse_nuclei((128, 128), corner_fraction=0.25, seed=0, radius=(3, 5))
    assert np.array_equal(z[...], image)
    assert z.nchunks_initialized == 1  # only the populated corner chunk is stored


def test_write_3d_zarr(tmp_path):
    path = write_synthetic_zarr(
        str(tmp_path / "vol.zarr"), (20, 33, 30), (8, 16, 16), seed=1, radius=(3, 5), dtype="uint8"
    )
    z = zarr.open_array(path, mode="r")
    image, _ = synthetic_nuclei((20, 33, 30), seed=1, radius=(3, 5), dtype="uint8")
    assert z.dtype == np.uint8 and np.array_equal(z[...], image)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shape": (10,)},
        {"shape": (0, 10)},
        {"shape": (8, 8, 8, 8)},
        {"radius": (0.5, 2)},
        {"radius": (9, 4)},
        {"density": 0},
        {"noise": -1},
        {"intensity": (0.05, 0.9)},
        {"n_nuclei": -3},
    ],
)
def test_invalid_parameters(kwargs):
    kwargs = {"shape": (64, 64), **kwargs}
    with pytest.raises(InvalidParameterError):
        synthetic_nuclei(kwargs.pop("shape"), **kwargs)


def test_invalid_sparse_and_zarr_parameters(tmp_path):
    with pytest.raises(InvalidParameterError, match="corner_fraction"):
        sparse_nuclei((64, 64), corner_fraction=0)
    with pytest.raises(InvalidParameterError, match="chunks"):
        write_synthetic_zarr(tmp_path / "x.zarr", (64, 64), (32,))
    with pytest.raises(InvalidParameterError, match="kind"):
        write_synthetic_zarr(tmp_path / "x.zarr", (64, 64), (32, 32), kind="dense")
    with pytest.raises(InvalidParameterError, match="outside"):
        sparse_nuclei((64, 64), outside="black")

"""Tests of the built-in segmenters and the segmenter registry."""

from __future__ import annotations

import dataclasses
import functools
import pickle
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest
import scipy.ndimage as ndi

import blockbuster.segmenters._registry as registry
from blockbuster.core import instance_f1
from blockbuster.errors import InvalidParameterError, SegmenterNotFoundError
from blockbuster.segmenters import (
    ThresholdSegmenter,
    WatershedSegmenter,
    available_segmenters,
    get_segmenter,
    segmenter_options_schema,
    threshold,
    watershed,
)
from blockbuster.synthetic import synthetic_nuclei

FACTORIES = [threshold, watershed]


@functools.cache
def _image(kind: str):
    if kind == "2d":
        return synthetic_nuclei((160, 192), seed=0)
    return synthetic_nuclei((32, 56, 64), radius=(5, 8), seed=0)


def _is_consecutive(labels: np.ndarray) -> bool:
    return np.unique(labels).tolist() == list(range(int(labels.max()) + 1))


# --- behaviour on tiles --------------------------------------------------------------


@pytest.mark.parametrize("factory", FACTORIES)
@pytest.mark.parametrize("kind", ["2d", "3d"])
def test_output_shape_dtype_and_determinism(factory, kind):
    image, _ = _image(kind)
    seg = factory()
    a = seg(image)
    assert a.shape == image.shape and a.dtype == np.uint32
    assert a.max() >= 1 and _is_consecutive(a)
    assert np.array_equal(a, seg(image.copy()))
    assert np.array_equal(a, pickle.loads(pickle.dumps(seg))(image))


@pytest.mark.parametrize("factory", FACTORIES)
@pytest.mark.parametrize(
    "tile",
    [
        np.zeros((32, 40), np.uint16),
        np.full((8, 16, 16), 1234, np.uint16),
        np.full((20, 20), 0.25, np.float32),
        np.zeros((1, 1), np.uint8),
    ],
)
def test_all_background_tile_gives_zeros(factory, tile):
    out = factory()(tile)
    assert out.shape == tile.shape and out.dtype == np.uint32 and not out.any()


@pytest.mark.parametrize("factory", FACTORIES)
def test_fixed_threshold_above_everything_gives_zeros(factory):
    image, _ = _image("2d")
    assert not factory(threshold=float(image.max()))(image).any()


@pytest.mark.parametrize("factory", FACTORIES)
def test_float_and_bool_tiles(factory):
    image, _ = _image("2d")
    as_float = image.astype(np.float64) / 65535
    a, b = factory()(image) > 0, factory()(as_float) > 0  # Otsu: per-value vs 256 bins
    assert (a & b).sum() >= 0.98 * (a | b).sum()
    fixed_int = factory(threshold=30000.5)(image)
    assert np.array_equal(fixed_int, factory(threshold=30000.5 / 65535)(as_float))
    mask = image > 30000
    out = factory(threshold=0.5, smooth_sigma=0)(mask)
    assert np.array_equal(out > 0, mask)


def test_threshold_connectivity_min_size_and_fixed_value():
    tile = np.zeros((7, 7), np.uint16)
    tile[1, 1] = tile[2, 2] = 100  # diagonal neighbours
    tile[4:7, 4:7] = 100  # a 3x3 square
    assert threshold(connectivity=1)(tile).max() == 3
    assert threshold(connectivity=2)(tile).max() == 2
    assert threshold(connectivity=5)(tile).max() == 2  # above ndim: full connectivity
    out = threshold(min_size=2)(tile)
    assert out.max() == 1 and (out == 1).sum() == 9 and _is_consecutive(out)
    assert threshold(threshold=100)(tile).max() == 0  # strictly greater than
    assert threshold(threshold=99.5)(tile).max() == 3


def test_threshold_equals_plain_connected_components():
    image, _ = _image("3d")
    fixed = 30000.0
    expected, n = ndi.label(image > fixed)
    out = threshold(threshold=fixed)(image)
    assert out.max() == n and np.array_equal(out, expected)


def test_smoothing_per_axis():
    image, _ = _image("3d")
    iso = threshold(smooth_sigma=1.0)(image)
    per_axis = threshold(smooth_sigma=(1.0, 1.0, 1.0))(image)
    assert np.array_equal(iso, per_axis)
    with pytest.raises(InvalidParameterError, match="smooth_sigma"):
        threshold(smooth_sigma=(1.0, 1.0))(image)


def _two_touching_balls(ndim: int) -> np.ndarray:
    shape = (24,) * (ndim - 1) + (40,)
    grid = np.indices(shape)
    c1 = [12] * (ndim - 1) + [12]
    c2 = [12] * (ndim - 1) + [27]
    d1 = sum((g - c) ** 2 for g, c in zip(grid, c1))
    d2 = sum((g - c) ** 2 for g, c in zip(grid, c2))
    return (((d1 < 64) | (d2 < 64)) * 1000 + 50).astype(np.uint16)


@pytest.mark.parametrize("ndim", [2, 3])
def test_watershed_splits_two_touching_balls(ndim):
    tile = _two_touching_balls(ndim)
    assert threshold()(tile).max() == 1
    out = watershed()(tile)
    assert out.max() == 2
    assert out[(12,) * (ndim - 1) + (10,)] != out[(12,) * (ndim - 1) + (29,)]


def test_watershed_options():
    image, _ = _image("2d")
    few = watershed(min_distance=12)(image).max()
    many = watershed(min_distance=2)(image).max()
    assert few < many
    assert watershed(footprint=5)(image).max() == watershed(footprint=(5, 5))(image).max()
    big = watershed(min_size=300)(image)
    assert _is_consecutive(big) and big.max() < watershed()(image).max()
    assert np.bincount(big.ravel())[1:].min() >= 300
    with pytest.raises(InvalidParameterError, match="footprint"):
        watershed(footprint=(5, 5, 5))(image)


def test_watershed_thin_objects_keep_a_label():
    tile = np.zeros((9, 30), np.uint16)
    tile[2, 2:28] = 500  # a one-pixel-wide line
    tile[5:8, 5] = 500  # a tiny vertical bar
    out = watershed(smooth_sigma=0, threshold=100)(tile)
    assert np.array_equal(out > 0, tile > 0)
    assert out.max() >= 2 and _is_consecutive(out)


# --- channels --------------------------------------------------------------------------


@pytest.mark.parametrize("factory", FACTORIES)
def test_channel_selection_and_reduction(factory):
    image, _ = _image("2d")
    dim = (image // 8).astype(np.uint16)
    stack = np.stack([dim, image, np.zeros_like(image)], axis=-1)  # channels last
    plain = factory()(image)
    assert np.array_equal(factory(channel_axis=-1, channel=1)(stack), plain)
    assert np.array_equal(factory(channel_axis=2, channel=1)(stack), plain)
    assert np.array_equal(factory(channel_axis=-1)(stack), plain)  # "max" default
    assert np.array_equal(factory(channel_axis=-1, channel="max")(stack), plain)
    mean = factory(channel_axis=0, channel="mean")(np.moveaxis(stack, -1, 0))
    assert mean.shape == image.shape and mean.max() > 0
    with pytest.raises(InvalidParameterError, match="channel=3"):
        factory(channel_axis=-1, channel=3)(stack)
    with pytest.raises(InvalidParameterError, match="channel_axis=4"):
        factory(channel_axis=4)(stack)


def test_with_channel_axis():
    seg = watershed(min_size=3)
    assert seg.with_channel_axis(None) is seg
    moved = seg.with_channel_axis(0)
    assert moved.channel_axis == 0 and moved.min_size == 3
    assert moved.with_channel_axis(2) is moved


# --- identity, pickling, options --------------------------------------------------------


@pytest.mark.parametrize("factory", FACTORIES)
def test_pickle_round_trip_and_cache_token(factory):
    seg = factory(min_size=4, smooth_sigma=(1, 2))
    back = pickle.loads(pickle.dumps(seg))
    assert back == seg and hash(back) == hash(seg)
    assert back.cache_token() == seg.cache_token()
    token = seg.cache_token()
    assert type(seg).__qualname__ in token and ":v1:" in token and "0x" not in token
    assert factory(min_size=np.int64(4), smooth_sigma=[1.0, 2.0]).cache_token() == token
    assert factory(min_size=5, smooth_sigma=(1, 2)).cache_token() != token
    assert factory(min_size=4, smooth_sigma=(1, 2), channel_axis=0).cache_token() != token
    assert seg.memory_factor > 1 and seg.uses_gpu is False
    assert dataclasses.is_dataclass(seg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        seg.min_size = 3


def test_tokens_differ_between_segmenters():
    assert threshold().cache_token() != watershed().cache_token()
    assert threshold(threshold=1.0).cache_token() != threshold(threshold=2.0).cache_token()
    assert watershed(min_distance=3).cache_token() != watershed(min_distance=4).cache_token()


def test_identity_module_uses_cache_token():
    identity = pytest.importorskip("blockbuster.core")
    seg = watershed(min_distance=3)
    assert identity.fn_token(seg) == seg.cache_token()


@pytest.mark.parametrize(
    "factory, kwargs, option",
    [
        (threshold, {"threshold": "otsu"}, "threshold"),
        (threshold, {"threshold": float("nan")}, "threshold"),
        (threshold, {"smooth_sigma": -1}, "smooth_sigma"),
        (threshold, {"smooth_sigma": ()}, "smooth_sigma"),
        (threshold, {"min_size": -1}, "min_size"),
        (threshold, {"min_size": 2.5}, "min_size"),
        (threshold, {"min_size": True}, "min_size"),
        (threshold, {"connectivity": 0}, "connectivity"),
        (threshold, {"channel": 1}, "channel"),
        (threshold, {"channel_axis": 0, "channel": "median"}, "channel"),
        (threshold, {"channel_axis": 0, "channel": -1}, "channel"),
        (threshold, {"channel_axis": 1.0}, "channel_axis"),
        (watershed, {"min_distance": 0}, "min_distance"),
        (watershed, {"footprint": 0}, "footprint"),
        (watershed, {"footprint": []}, "footprint"),
        (watershed, {"smooth_sigma": "big"}, "smooth_sigma"),
    ],
)
def test_bad_options_raise_invalid_parameter(factory, kwargs, option):
    with pytest.raises(InvalidParameterError, match=option) as info:
        factory(**kwargs)
    assert isinstance(info.value, ValueError)


# --- memory model -----------------------------------------------------------------------


@pytest.mark.parametrize("factory", FACTORIES)
def test_memory_estimate_covers_measured_peak(factory):
    image = np.tile(_image("3d")[0], (2, 2, 2))  # ~1 Mi voxels: fixed costs negligible
    seg = factory()
    seg(image)  # warm imports
    tracemalloc.start()
    try:
        seg(image)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    measured = peak + image.nbytes
    estimate = seg.peak_memory_bytes(image.shape, image.dtype)
    print(
        f"{type(seg).__name__}: measured {measured / image.nbytes:.1f}x, "
        f"estimate {estimate / image.nbytes:.1f}x, memory_factor {seg.memory_factor}"
    )
    assert measured <= 1.15 * estimate
    assert measured <= 1.15 * seg.memory_factor * image.nbytes


# --- quality on the synthetic nuclei ---------------------------------------------------


def test_watershed_splits_touching_nuclei_2d():
    image, truth = synthetic_nuclei((384, 384), seed=0, touching=True)
    f_thr = instance_f1(threshold()(image), truth)
    f_ws = instance_f1(watershed()(image), truth)
    print(
        f"2D {truth.max()} nuclei: threshold F1 {f_thr['f1']:.3f}, watershed F1 {f_ws['f1']:.3f}"
    )
    # measured over seeds 0-9: threshold 0.06-0.26, watershed 0.925-0.978
    assert f_ws["f1"] >= 0.9
    assert f_thr["f1"] <= 0.4
    assert f_ws["f1"] - f_thr["f1"] >= 0.5


def test_watershed_splits_touching_nuclei_3d():
    image, truth = synthetic_nuclei((48, 96, 96), radius=(5, 8), seed=1, touching=True)
    f_thr = instance_f1(threshold()(image), truth)
    f_ws = instance_f1(watershed()(image), truth)
    print(
        f"3D {truth.max()} nuclei: threshold F1 {f_thr['f1']:.3f}, watershed F1 {f_ws['f1']:.3f}"
    )
    # measured over seeds 0-9: threshold 0.00-0.03, watershed 0.93-1.00
    assert f_ws["f1"] >= 0.9
    assert f_ws["f1"] - f_thr["f1"] >= 0.5


def test_separate_nuclei_are_found_by_both():
    image, truth = synthetic_nuclei((256, 256), seed=3, touching=False)
    assert instance_f1(threshold()(image), truth)["f1"] >= 0.95
    assert instance_f1(watershed()(image), truth)["f1"] >= 0.95


# --- registry ---------------------------------------------------------------------------


def test_builtins_are_available():
    segs = available_segmenters()
    assert {"threshold", "watershed"} <= set(segs)
    assert segs["threshold"] is threshold and segs["watershed"] is watershed
    assert list(segs) == sorted(segs)


def test_get_segmenter_builds_with_options():
    seg = get_segmenter("watershed", min_distance=4, min_size=10)
    assert isinstance(seg, WatershedSegmenter)
    assert seg == watershed(min_distance=4, min_size=10)
    assert isinstance(get_segmenter("threshold"), ThresholdSegmenter)


def test_unknown_segmenter():
    with pytest.raises(SegmenterNotFoundError) as info:
        get_segmenter("watershead")
    assert isinstance(info.value, LookupError)
    msg = str(info.value)
    assert "threshold" in msg and "watershed" in msg and "Did you mean 'watershed'" in msg
    with pytest.raises(LookupError):
        segmenter_options_schema("nope")
    with pytest.raises(InvalidParameterError):
        get_segmenter(None)


def test_unknown_option_names_it_and_lists_accepted():
    with pytest.raises(InvalidParameterError) as info:
        get_segmenter("threshold", min_sise=3, bogus=1)
    msg = str(info.value)
    assert "'min_sise'" in msg and "did you mean 'min_size'" in msg and "'bogus'" in msg
    for name in ("threshold", "smooth_sigma", "min_size", "connectivity", "channel"):
        assert name in msg
    with pytest.raises(InvalidParameterError, match="min_size"):
        get_segmenter("threshold", min_size=-2)  # value checked by the factory


def test_options_schema():
    schema = segmenter_options_schema("threshold")
    assert list(schema) == [
        "threshold",
        "smooth_sigma",
        "min_size",
        "connectivity",
        "channel_axis",
        "channel",
    ]
    default, annotation, doc = schema["min_size"]
    assert default == 0 and annotation == "int" and doc.startswith("Objects with fewer")
    assert schema["threshold"].annotation == "float | None"
    assert schema["threshold"].default is None
    ws = segmenter_options_schema("watershed")
    assert ws["min_distance"].doc.startswith("Smallest distance")
    assert all(spec.doc for spec in ws.values())
    assert ws["smooth_sigma"].default == watershed().smooth_sigma


_PLUGIN = textwrap.dedent('''
    def make(size: int, scale: float = 1.0):
        """A fake plugin.

        Parameters
        ----------
        size : int
            How big. More text here.
        scale : float
            How much.
        """
        return ("made", size, scale)

    def anything(**kwargs):
        return kwargs

    raise_on_import = False
''')


def _install_dist(folder, name: str, entry_points: str) -> None:
    """A minimal installed distribution in ``folder`` (as pip leaves one): its
    ``*.dist-info`` with METADATA and the entry points."""
    info = folder / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{registry.GROUP}]\n{entry_points}")


@pytest.fixture
def fake_plugins(tmp_path, monkeypatch):
    """Two real installed distributions on sys.path (found by importlib.metadata as any
    pip-installed plugin is): returns the segmenters registered before they were added."""
    before = set(available_segmenters())
    first, second = tmp_path / "site-a", tmp_path / "site-b"
    first.mkdir()
    (first / "bb_fake_plugin.py").write_text(_PLUGIN)
    _install_dist(
        first,
        "bb_fake_plugin",
        "fake = bb_fake_plugin:make\n"
        "loose = bb_fake_plugin:anything\n"
        "broken = bb_no_such_module_xyz:make\n"
        "threshold = bb_fake_plugin:make\n",  # must not hijack a built-in
    )
    _install_dist(second, "bb_fake_dup", "fake = bb_fake_plugin:anything\n")  # later: loses
    monkeypatch.syspath_prepend(str(second))
    monkeypatch.syspath_prepend(str(first))  # first on sys.path, first found
    monkeypatch.delitem(sys.modules, "bb_fake_plugin", raising=False)
    yield before
    sys.modules.pop("bb_fake_plugin", None)


def test_plugins_via_entry_points(fake_plugins):
    segs = available_segmenters()
    assert {"threshold", "watershed"} <= fake_plugins
    assert set(segs) - fake_plugins == {"fake", "loose", "broken"}
    # an entry point, not loaded (of importlib.metadata, or of the importlib_metadata
    # backport when another installed package's finder supplies it)
    fake = segs["fake"]
    assert type(fake).__name__ == "EntryPoint" and not callable(fake)
    assert fake.value.endswith(":make")
    assert segs["threshold"] is threshold
    assert get_segmenter("fake", size=3) == ("made", 3, 1.0)
    # a factory taking **kwargs does not switch the allow-list off (issue 15): only the
    # names it lists in ``extra_options`` pass
    with pytest.raises(InvalidParameterError, match="does not accept the option 'anything'"):
        get_segmenter("loose", anything=1, goes=2)
    assert get_segmenter("loose") == {}
    with pytest.raises(InvalidParameterError, match="'size'"):
        get_segmenter("fake")  # required option missing
    with pytest.raises(InvalidParameterError, match="accepted options: size, scale"):
        get_segmenter("fake", size=1, colour="red")
    with pytest.raises(SegmenterNotFoundError, match="cannot be loaded") as info:
        get_segmenter("broken")
    assert isinstance(info.value.__cause__, ImportError)
    schema = segmenter_options_schema("fake")
    assert schema["size"] == (registry.REQUIRED, "int", "How big.")
    assert schema["scale"] == (1.0, "float", "How much.")
    assert segmenter_options_schema("loose") == {}

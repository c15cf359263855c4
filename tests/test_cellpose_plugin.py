"""Tests of the Cellpose plugin, :mod:`blockbuster.plugins.cellpose`.

No weights are downloaded: a randomly initialised network of the installed Cellpose
major version is saved to a temporary file and loaded from that path. A random network
segments nothing meaningful, so the tests check what the plugin promises (valid uint32
labels of the right shape, axis handling, one model load per process, pickling, clear
errors), not segmentation quality.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pickle
import shutil

import numpy as np
import pytest
from conftest import same_partition

pytest.importorskip("cellpose", reason="the cellpose extra is not installed")
torch = pytest.importorskip("torch", reason="the cellpose extra is not installed")

from blockbuster.errors import (
    InvalidParameterError,
    ModelNotFoundError,
    NoGPUError,
)
from blockbuster.plugins.cellpose import (
    CellposeFn,
    cellpose_fn,
    cellpose_major_version,
    clear_model_cache,
    model_loads,
)

MAJOR = cellpose_major_version()

# Options that keep a random network fast on a CPU. Cellpose 3 accepts small network
# blocks; Cellpose-SAM (4) only its own block size.
FAST = {"bsize": 64} if MAJOR < 4 else {}
# Options under which the random network does produce some masks in 2D.
FINDS_MASKS = {**FAST, "flow_threshold": 0, "cellprob_threshold": -3}


def _tiny_sam_vit(checkpoint=None):
    """Stand-in for segment_anything's ViT-L builder: a 1-block, 32-wide ViT (Cellpose 4)."""
    from types import SimpleNamespace

    from segment_anything.modeling import ImageEncoderViT

    return SimpleNamespace(
        image_encoder=ImageEncoderViT(
            img_size=1024,
            patch_size=16,
            embed_dim=32,
            depth=1,
            num_heads=1,
            mlp_ratio=2.0,
            out_chans=256,
            use_rel_pos=False,
            window_size=0,
        )
    )


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A randomly initialised Cellpose network of the installed major version, on disk."""
    path = tmp_path_factory.mktemp("cellpose_model") / "random_model"
    torch.manual_seed(0)
    if MAJOR < 4:
        # Cellpose 3: CellposeModel always builds CPnet([2, 32, 64, 128, 256]); a smaller
        # net would not load into it. 6.6 M parameters, 26 MB, fast on a CPU.
        from cellpose.resnet_torch import CPnet

        CPnet([2, 32, 64, 128, 256], 3, sz=3, diam_mean=30.0).save_model(str(path))
        yield str(path)
    else:
        # Cellpose 4 always builds Cellpose-SAM around a ViT-L (300 M parameters); the
        # tests swap the ViT builder for a tiny one, in this process only.
        try:  # Cellpose >= 4.2
            from cellpose.vit import CPSAM as Net
            from cellpose.vit import sam_model_registry
        except ImportError:  # Cellpose 4.0, 4.1
            from cellpose.vit_sam import Transformer as Net
            from cellpose.vit_sam import sam_model_registry

        mp = pytest.MonkeyPatch()
        mp.setitem(sam_model_registry, "vit_l", _tiny_sam_vit)
        net = Net()
        with torch.no_grad():  # bias the cell probability up so that masks appear
            net.out.bias[2 * net.ps**2 : 3 * net.ps**2] += 2.0
        net.save_model(str(path))
        yield str(path)
        clear_model_cache()
        mp.undo()


def _disks(shape=(128, 128), n=8, radius=9, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.full(shape, 100.0)
    for _ in range(n):
        cy, cx = rng.integers(radius, np.array(shape) - radius)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 1000
    return (img + rng.integers(0, 20, shape)).astype(np.uint16)


def _check_labels(labels, shape):
    assert isinstance(labels, np.ndarray)
    assert labels.dtype == np.uint32
    assert labels.shape == shape
    assert labels.min(initial=0) >= 0


# ---- construction ---------------------------------------------------------------------


def test_construction_is_cheap_and_validated():
    before = model_loads()
    fn = cellpose_fn("cyto3", False, 30, flow_threshold=0.6)
    assert isinstance(fn, CellposeFn)
    assert fn.diameter == 30.0 and fn.eval_kwargs == {"flow_threshold": 0.6}
    assert fn.uses_gpu is False and cellpose_fn(gpu=True).uses_gpu is True
    assert fn.memory_factor > 1
    assert cellpose_fn(diameter=0).diameter is None
    assert model_loads() == before  # nothing loaded at construction
    bad = [
        dict(diameter=-3),
        dict(gpu="yes"),
        dict(do_3D=True, stitch_threshold=0.5),
        dict(stitch_threshold=2.0),
        dict(compute_masks=False),
        dict(channel_axis=1.5),
        dict(normalize="yes"),
    ]
    for kwargs in bad:
        with pytest.raises(InvalidParameterError):
            cellpose_fn(**kwargs)


# ---- segmentation ---------------------------------------------------------------------


def test_2d_tile(model_path):
    fn = cellpose_fn(pretrained_model=model_path, **FAST)
    _check_labels(fn(_disks()), (128, 128))
    labels = cellpose_fn(pretrained_model=model_path, **FINDS_MASKS)(_disks())
    _check_labels(labels, (128, 128))
    assert labels.max() > 0  # the random net does find something under these options


def test_3d_tile(model_path):
    vol = np.stack([_disks((64, 64), n=4, radius=6, seed=z // 4) for z in range(16)])
    _check_labels(cellpose_fn(pretrained_model=model_path, **FAST)(vol), (16, 64, 64))


def _moving_disks(z_planes: int = 6, size: int = 64, seed: int = 0) -> np.ndarray:
    """A stack of planes whose disks move from plane to plane: one by 1 pixel a plane
    (its masks overlap a lot), one by 6 pixels (IoU about 0.35), one appearing at plane 2,
    one ending after plane 2. Masks of consecutive planes overlap at IoUs on both sides
    of 0.5, so stitching at 0.5 joins some and not others."""
    yy, xx = np.mgrid[:size, :size]
    vol = np.full((z_planes, size, size), 100.0)
    # (y, x, dy, dx per plane, radius, first plane, plane after the last)
    disks = [(14, 10, 0, 1, 8, 0, 6), (44, 12, 0, 6, 8, 0, 6), (16, 44, 1, 0, 7, 2, 6)]
    disks.append((46, 48, 0, 0, 7, 0, 3))
    for z in range(z_planes):
        for cy, cx, dy, dx, r, z0, z1 in disks:
            if z0 <= z < z1:
                vol[z][(yy - cy - dy * z) ** 2 + (xx - cx - dx * z) ** 2 <= r * r] = 1000
    rng = np.random.default_rng(seed)
    return (vol + rng.integers(0, 20, vol.shape)).astype(np.uint16)


def _stitch_planes(planes: np.ndarray, threshold: float) -> np.ndarray:
    """Oracle of plane stitching, written out plainly: plane by plane, a mask takes the id
    of the mask of the plane before that it overlaps with IoU >= threshold (at most one
    can, for threshold >= 0.5: masks of one plane are disjoint), else a new id."""
    out = np.zeros(planes.shape, np.int64)
    next_id = 1
    for z in range(planes.shape[0]):
        for lab in np.unique(planes[z][planes[z] > 0]):
            mask = planes[z] == lab
            best_iou, best = 0.0, 0
            if z:
                for prev in np.unique(out[z - 1][mask & (out[z - 1] > 0)]):
                    other = out[z - 1] == prev
                    iou = (mask & other).sum() / (mask | other).sum()
                    if iou > best_iou:
                        best_iou, best = iou, prev
            if best_iou >= threshold:
                out[z][mask] = best
            else:
                out[z][mask] = next_id
                next_id += 1
    return out


def test_stack_of_2d_planes(model_path):
    """A stack of planes segmented plane by plane and stitched at IoU 0.5: the labels are
    the plane-by-plane masks joined exactly as the oracle joins them. Objects continue
    across planes (one id through them), appear and end, and some masks of consecutive
    planes overlap too little to be joined, so a missing, wrong-threshold or per-plane
    stitch gives other objects. Unstitched, every label lies in one plane only."""
    vol = _moving_disks()
    # normalized per plane and no size filter in both modes (stitching normalizes the
    # stack as a whole and filters sizes in 3D by default): the same plane masks
    opts = dict(pretrained_model=model_path, do_3D=False, min_size=-1, **FINDS_MASKS)
    opts["normalize"] = {"norm3D": False}
    stitched = cellpose_fn(stitch_threshold=0.5, **opts)(vol)
    _check_labels(stitched, vol.shape)
    per_plane = cellpose_fn(**opts)(vol)
    _check_labels(per_plane, vol.shape)
    # plane by plane: every label lies in one plane only
    for lab in np.unique(per_plane[per_plane > 0]):
        assert len(np.unique(np.nonzero(per_plane == lab)[0])) == 1
    # the same masks, joined across planes as the oracle joins them
    assert np.array_equal(stitched > 0, per_plane > 0)
    oracle = _stitch_planes(per_plane, 0.5)
    assert same_partition(stitched, oracle)
    # ... and there was something to join and something to keep apart: an object through
    # all planes, others through fewer; other objects at IoU 0.25 and at 0.75
    n = len(np.unique(oracle[oracle > 0]))
    assert n < len(np.unique(per_plane[per_plane > 0]))
    spans = [len(np.unique(np.nonzero(oracle == lab)[0])) for lab in range(1, n + 1)]
    assert max(spans) == vol.shape[0] and min(spans) < vol.shape[0]
    assert not same_partition(oracle, _stitch_planes(per_plane, 0.25))
    assert not same_partition(oracle, _stitch_planes(per_plane, 0.75))


def test_axes(model_path):
    img = _disks()
    plain = cellpose_fn(pretrained_model=model_path, **FINDS_MASKS)
    ref = plain(img)
    assert ref.max() > 0
    # a channel axis of length 1 is a grayscale tile; it is removed from the labels
    np.testing.assert_array_equal(
        cellpose_fn(pretrained_model=model_path, channel_axis=0, **FINDS_MASKS)(img[None]), ref
    )
    two = cellpose_fn(pretrained_model=model_path, channel_axis=-1, **FINDS_MASKS)
    _check_labels(two(np.stack([img, img // 2], axis=-1)), img.shape)
    # z anywhere: labels follow the tile's own axis order
    vol = np.stack([_disks((48, 40), n=3, radius=8, seed=z) for z in range(4)])
    per_plane = dict(pretrained_model=model_path, do_3D=False, **FINDS_MASKS)
    ref3 = cellpose_fn(**per_plane)(vol)
    moved = cellpose_fn(z_axis=2, **per_plane)(np.moveaxis(vol, 0, 2))
    np.testing.assert_array_equal(moved, np.moveaxis(ref3, 0, 2))
    with_c = cellpose_fn(z_axis=1, channel_axis=0, **per_plane)(vol[None])
    np.testing.assert_array_equal(with_c, ref3)
    # thin tiles (image edges) keep their shape
    for shape in [(5, 128), (128, 1), (3, 3)]:
        _check_labels(plain(img[: shape[0], : shape[1]]), shape)
    _check_labels(cellpose_fn(pretrained_model=model_path, **FAST)(vol[:1]), (1, 48, 40))
    with pytest.raises(InvalidParameterError):
        plain(img[0])  # 1D
    with pytest.raises(InvalidParameterError):
        cellpose_fn(pretrained_model=model_path, z_axis=1)(img)  # z_axis on a 2D tile


# ---- pickling, caching, processes -----------------------------------------------------


def test_pickle_round_trip(model_path):
    fn = cellpose_fn(pretrained_model=model_path, diameter=25, **FINDS_MASKS)
    ref = fn(_disks())
    loads = model_loads()
    data = pickle.dumps(fn)
    assert len(data) < 2000  # options only, never the model
    back = pickle.loads(data)
    assert back == fn and back.cache_token() == fn.cache_token()
    np.testing.assert_array_equal(back(_disks()), ref)
    assert model_loads() == loads  # the copy reuses this process's model


def test_model_loaded_once_per_process(model_path):
    clear_model_cache()
    before = model_loads()
    fns = [
        cellpose_fn(pretrained_model=model_path, **FINDS_MASKS),
        cellpose_fn(pretrained_model=model_path, diameter=40, **FAST),
    ]
    tiles = [_disks(seed=s) for s in range(3)]
    # cold cache, concurrent first calls from several threads (a Dask worker's threads)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        got = list(pool.map(fns[0], tiles))
    assert model_loads() == before + 1
    for tile, labels in zip(tiles, got):
        np.testing.assert_array_equal(fns[0](tile), labels)  # thread-safe and deterministic
    fns[1](tiles[0])  # other eval options, same weights: same model
    assert model_loads() == before + 1


def test_no_compiling_per_tile(model_path, monkeypatch):
    """A loaded CPU model is already converted: tiles compile nothing, so threads can share it.

    Cellpose converts its network to MKL-DNN layers in place on every forward pass,
    compiling them with TorchScript (``ast.parse``). Unconverted, a worker's threads
    raced on the shared model (a half-converted network, "Can't redefine method", or
    CPython 3.11's "AST constructor recursion depth mismatch").
    """
    import ast

    clear_model_cache()
    fn = cellpose_fn(pretrained_model=model_path, **FINDS_MASKS)
    net = fn.load_model().net
    parses = []
    real_parse = ast.parse
    monkeypatch.setattr(ast, "parse", lambda *a, **k: parses.append(1) or real_parse(*a, **k))
    fn(_disks())
    assert parses == []
    if getattr(net, "mkldnn", False):  # the CPU MKL-DNN path: its layers were converted
        assert not any(isinstance(m, torch.nn.Conv2d) for m in net.modules())


@pytest.mark.skipif(
    MAJOR >= 4,
    reason="the tiny Cellpose 4 test network needs a patch that a fresh process does not have",
)
def test_fresh_worker_process(model_path):
    fn = cellpose_fn(pretrained_model=model_path, **FINDS_MASKS)
    tile = _disks()
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        assert pool.submit(model_loads).result() == 0
        first = pool.submit(fn, tile).result()
        again = pool.submit(fn, tile).result()
        assert pool.submit(model_loads).result() == 1
    np.testing.assert_array_equal(first, fn(tile))
    np.testing.assert_array_equal(again, first)


# ---- errors ---------------------------------------------------------------------------


@pytest.fixture
def no_downloads(monkeypatch, tmp_path):
    """An empty model directory, and Cellpose's downloader armed to fail the test."""
    import cellpose.models
    import cellpose.utils

    def boom(*args, **kwargs):  # pragma: no cover - reaching it is the failure
        raise AssertionError("Cellpose tried to download weights")

    empty = tmp_path / "empty_models"
    empty.mkdir()
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(empty))
    monkeypatch.setattr(cellpose.models, "MODEL_DIR", empty)
    monkeypatch.setattr(cellpose.utils, "download_url_to_file", boom)
    monkeypatch.setattr(cellpose.models, "cache_model_path", boom, raising=False)
    return empty


def test_missing_model(no_downloads):
    builtin = "cyto3" if MAJOR < 4 else "cpsam"
    for fn in [
        cellpose_fn(builtin, **FAST),
        cellpose_fn(None),
        cellpose_fn("no_such_model", **FAST),
    ]:
        with pytest.raises(ModelNotFoundError) as info:
            fn(_disks((32, 32)))
        msg = str(info.value)
        assert str(no_downloads) in msg and "pretrained_model" in msg
        assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(ModelNotFoundError, match="no such file"):
        cellpose_fn(pretrained_model=str(no_downloads / "gone.pth")).load_model()
    with pytest.raises(ModelNotFoundError, match="directory"):
        cellpose_fn(pretrained_model=str(no_downloads)).resolve_model_path()


def test_model_found_by_name(no_downloads, model_path):
    shutil.copy(model_path, no_downloads / "my_model")
    fn = cellpose_fn("my_model", **FAST)
    assert fn.resolve_model_path() == (no_downloads / "my_model").resolve()
    _check_labels(fn(_disks((64, 64))), (64, 64))
    if MAJOR < 4:  # Cellpose 3 stores cyto/cyto2/nuclei as <name>torch_0
        shutil.copy(model_path, no_downloads / "nucleitorch_0")
        assert cellpose_fn("nuclei").resolve_model_path().name == "nucleitorch_0"
    wrong = "cpsam" if MAJOR < 4 else "cyto3"  # a model of the other major version
    with pytest.raises(InvalidParameterError, match="Cellpose"):
        cellpose_fn(wrong).resolve_model_path()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_gpu_without_gpu(model_path):
    fn = cellpose_fn(pretrained_model=model_path, gpu=True)
    assert fn.uses_gpu
    before = model_loads()
    with pytest.raises(NoGPUError, match="gpu=False"):
        fn(_disks((32, 32)))
    assert model_loads() == before


def test_cache_token(model_path, tmp_path):
    fn = cellpose_fn(pretrained_model=model_path, diameter=30, **FAST)
    token = fn.cache_token()
    assert isinstance(token, str) and token
    assert cellpose_fn(pretrained_model=model_path, diameter=30, **FAST).cache_token() == token
    assert (
        cellpose_fn(pretrained_model=model_path, diameter=30, gpu=True, **FAST).cache_token()
        == token
    )  # where, not what
    assert cellpose_fn(pretrained_model=model_path, diameter=31, **FAST).cache_token() != token
    assert (
        cellpose_fn(pretrained_model=model_path, diameter=30, min_size=5, **FAST).cache_token()
        != token
    )
    copy = tmp_path / "weights"
    shutil.copy(model_path, copy)
    fn2 = cellpose_fn(pretrained_model=str(copy))
    before = fn2.cache_token()
    st = os.stat(copy)
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes
    assert fn2.cache_token() == before  # identified by content, not by mtime
    raw = bytearray(copy.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # weights replaced: same size, same mtime
    copy.write_bytes(bytes(raw))
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert fn2.cache_token() != before
    # a model that is not here still has a token (the client may lack the weights)
    assert cellpose_fn("not_here").cache_token() != cellpose_fn("not_here_either").cache_token()

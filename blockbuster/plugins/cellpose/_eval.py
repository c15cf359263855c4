"""Running Cellpose's ``eval`` on one tile laid out (Z,)Y,X,C: its options, padding, masks.

Used by :class:`blockbuster.plugins.cellpose.CellposeFn` (whose ``_eval_kwargs`` and
``_segment`` methods call these functions); imports Cellpose only when called.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from blockbuster.errors import TileOutputError

# Cellpose's normalisation defaults (identical in 3.1 and 4.x). They are always passed in
# full as a dict: Cellpose's ``eval`` otherwise writes into its module-level
# ``normalize_default`` dict, which makes results depend on earlier calls in the process.
_NORMALIZE_DEFAULTS: dict[str, Any] = {
    "lowhigh": None,
    "percentile": None,
    "normalize": True,
    "norm3D": True,
    "sharpen_radius": 0,
    "smooth_radius": 0,
    "tile_norm_blocksize": 0,
    "tile_norm_smooth3D": 1,
    "invert": False,
}

# Spatial extents below this are padded (mirror) before Cellpose and cropped after:
# Cellpose 3 mistakes an image with fewer than 8 rows for a channels-first array.
_MIN_EXTENT = 16


#: GPU memory one network input patch takes while Cellpose runs a batch (an estimate
#: for Cellpose 3's CPnet on 224^2 patches and Cellpose-SAM on 256^2; not measured on a
#: GPU yet, docs/gpu.md). The out-of-memory retry halves the batch when it is wrong.
PATCH_BYTES = 64 << 20
_BATCH: dict[int, int] = {}  # pid -> batch size chosen for this process's GPU


def choose_batch_size(free_bytes: int | None, patch_bytes: int = PATCH_BYTES) -> int:
    """Cellpose ``batch_size`` for a GPU with ``free_bytes`` free after the model loaded:
    half of it in patches, from Cellpose's default 8 up to 64 (a 2048^2 tile at the
    model's diameter is ~100 patches: two batches).

    Examples
    --------
    >>> choose_batch_size(None), choose_batch_size(2 << 30), choose_batch_size(80 << 30)
    (8, 16, 64)
    """
    if not free_bytes:
        return 8
    return int(min(64, max(8, free_bytes // 2 // patch_bytes)))


def gpu_batch_size() -> int:
    """The batch size chosen for this process's GPU (measured once, after the model
    loaded; lowered for good by an out-of-memory retry)."""
    import os

    pid = os.getpid()
    if pid not in _BATCH:
        free = None
        try:
            import torch

            if torch.cuda.is_available():
                free = int(torch.cuda.mem_get_info()[0])
        except Exception:  # pragma: no cover - CUDA unusable: Cellpose's default
            free = None
        _BATCH[pid] = choose_batch_size(free)
    return _BATCH[pid]


def lower_gpu_batch_size(to: int) -> None:
    """After an out-of-memory error: this process's tiles use batches of ``to``."""
    import os

    _BATCH[os.getpid()] = max(1, int(to))


def _eval_kwargs(fn, major: int, mode: str, nchan_given: bool) -> dict:
    """Keyword arguments of ``model.eval`` for ``fn`` in ``mode`` ("2d", "3d", "stitch")."""
    kw = dict(fn.eval_kwargs)
    if fn.gpu and not kw.get("batch_size"):
        kw["batch_size"] = gpu_batch_size()  # Cellpose's 8 leaves a large GPU idle
    normalize = kw.pop("normalize", True)
    invert = kw.pop("invert", None)
    import cellpose.models as cpm  # already imported by load_model

    keys = set(getattr(cpm, "normalize_default", _NORMALIZE_DEFAULTS))
    params = {k: v for k, v in _NORMALIZE_DEFAULTS.items() if k in keys}
    if isinstance(normalize, dict):
        params.update(normalize)
    else:
        params["normalize"] = bool(normalize)
    if invert is not None:
        params["invert"] = bool(invert)
    kw["normalize"] = params
    kw["diameter"] = fn.diameter
    kw["do_3D"] = mode == "3d"
    kw["stitch_threshold"] = (fn.stitch_threshold or 0.0) if mode == "stitch" else 0.0
    kw["channel_axis"] = 3 if mode in ("3d", "stitch") else 2
    kw["z_axis"] = 0 if mode in ("3d", "stitch") else None
    if major < 4:
        # ---- Cellpose 3: a 2-channel network; channels=[cyto, nuclei], 1-based,
        # 0 = grayscale. A tile without a channel axis is grayscale.
        if "channels" not in kw:
            kw["channels"] = None if nchan_given else [0, 0]
    # ---- Cellpose 4: takes up to 3 channels in any order; no `channels`.
    return kw


def _segment(fn, model, major: int, xc: np.ndarray, mode: str) -> np.ndarray:
    """Run ``model.eval`` on a canonical (Z,)Y,X,C array; labels shaped (Z,)Y,X."""
    shape = xc.shape[:-1]
    pad = [(0, max(0, _MIN_EXTENT - s)) for s in shape] + [(0, 0)]
    if any(p[1] for p in pad):
        xc = np.pad(xc, pad, mode="symmetric")
    kw = fn._eval_kwargs(major, mode, fn.channel_axis is not None)
    masks = np.asarray(model.eval(xc, **kw)[0])
    padded = xc.shape[:-1]
    if masks.shape != padded:  # Cellpose squeezes singleton axes
        if masks.size != math.prod(padded):
            raise TileOutputError(
                f"Cellpose returned masks of shape {masks.shape} for an input of "
                f"shape {padded} (mode {mode}); this is a bug, please report it."
            )
        masks = masks.reshape(padded)
    masks = masks[tuple(slice(0, s) for s in shape)]
    if masks.dtype != np.uint32:
        if masks.size and masks.min() < 0:  # pragma: no cover - defensive
            raise TileOutputError("Cellpose returned negative labels")
        masks = masks.astype(np.uint32)
    return masks

"""Finding tiles with nothing in them, cheaply.

The threshold comes from a *sample* of the image: a coarse pyramid level when the input
has one, else a spread of whole storage chunks (at most ``max_chunks``), else a strided
subsample: never a full read. The threshold is Otsu's on the sample (between the
background and the objects; pass ``threshold=`` when the image may hold no object at
all, since Otsu then splits the noise). The per-tile decision is exact: a tile is empty when no pixel of its core
exceeds the threshold.

Examples
--------
>>> import numpy as np
>>> img = np.zeros((64, 64), np.uint16); img[5:9, 5:9] = 1000
>>> threshold_from_sample(img.ravel())["threshold"] < 1000
True
>>> tile_maxima(img, (32, 32)).tolist()
[[1000, 0], [0, 0]]
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["threshold_from_sample", "sample_image", "tile_maxima"]


def threshold_from_sample(sample: NDArray[Any]) -> dict[str, Any]:
    """Estimate the empty/non-empty threshold from sampled pixel values."""
    s = np.asarray(sample).ravel()
    if s.size == 0:
        return {"threshold": 0.0, "method": "empty sample"}
    lo, hi = float(s.min()), float(s.max())
    if lo == hi:
        return {"threshold": lo, "method": "constant sample"}
    from skimage.filters import threshold_otsu

    t = float(threshold_otsu(s.astype(np.float64)))
    return {"threshold": t, "method": "Otsu threshold of a sample"}


def sample_image(
    src: Any, max_chunks: int = 32, max_pixels: int = 4_000_000
) -> tuple[NDArray[Any], str]:
    """A cheap sample of ``src``'s pixels (all channels), and how it was taken.

    ``src`` is an input source (``blockbuster.io.ArraySource``; core does not import io).
    """
    levels = src.meta.get("levels") if src.meta else None
    reader = src.reader
    if src.kind == "stored" and levels and len(levels) > 1 and hasattr(reader, "read_level"):
        for lvl in range(len(levels) - 1, 0, -1):
            if int(np.prod(levels[lvl])) <= max_pixels:
                return np.asarray(reader.read_level(lvl)), f"pyramid level {lvl}"
    shape = src.shape
    chunks = src.chunks or shape
    if src.kind == "stored":
        grid = [math.ceil(s / c) for s, c in zip(shape, chunks)]
        n = int(np.prod(grid))
        k = min(n, max_chunks, max(1, max_pixels // max(int(np.prod(chunks)), 1)))
        picks = np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))
        parts = []
        for p in picks:
            idx = np.unravel_index(int(p), grid)
            sl = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, chunks, shape))
            parts.append(np.asarray(reader.read(sl)).ravel())
        return np.concatenate(parts), f"{len(picks)} of {n} chunks"
    total = int(np.prod(shape))
    step = max(1, int(math.ceil((total / max_pixels) ** (1 / len(shape)))))
    sl = tuple(slice(None, None, step) for _ in shape)
    return np.asarray(src.dask_array[sl].compute()), f"strided sample (step {step})"


def tile_maxima(
    arr: Any, tile_shape: tuple[int, ...], channel_axis: int | None = None
) -> NDArray[Any]:
    """Per-tile maximum of a NumPy or dask array (tiles over spatial axes)."""
    import dask.array as da

    x = arr if isinstance(arr, da.Array) else da.from_array(np.asarray(arr))
    if channel_axis is not None:
        x = x.max(axis=channel_axis)
    x = x.rechunk(tuple(tile_shape))
    mx = x.map_blocks(
        lambda b: np.asarray(b.max(), dtype=b.dtype).reshape((1,) * b.ndim),
        chunks=tuple((1,) * len(c) for c in x.chunks),
        dtype=x.dtype,
    )
    out: NDArray[Any] = mx.compute()
    return out

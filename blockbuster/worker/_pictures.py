"""What workers do for a run's pictures: a strided read of regions of the output labels
and of the image (:func:`sample_regions`).

The preview keeps every ``step``-th pixel from 0 along each in-plane axis (for 3D, of the
middle plane only). A region is one output chunk (one shard when the output is
sharded), so the read goes through the direct chunk-file path and no chunk is read
twice; only the sampled pixels leave the worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from blockbuster.core import sample_starts
from blockbuster.io import full_slices, open_zarr_array_cached, read_region

__all__ = ["render_pictures", "sample_regions", "region_samples"]


def region_samples(
    bounds: Sequence[tuple[int, int]], step: int, plane: int | None
) -> tuple[tuple[slice, ...], tuple[slice, ...], tuple[int, ...]] | None:
    """For a region ``bounds`` (spatial, per axis ``(lo, hi)``): the slices to read, the
    strided slices within what was read, and where the samples land in the preview
    (row, column). ``plane``: the z index of a 3D preview (None for 2D). None when the
    region holds no sampled pixel.

    Examples
    --------
    >>> region_samples([(0, 8), (4, 12)], 4, None)
    ((slice(0, 8, None), slice(4, 12, None)), (slice(0, 8, 4), slice(0, 8, 4)), (0, 1))
    >>> region_samples([(0, 4), (0, 8), (0, 8)], 4, 2)[:2]
    ((slice(2, 3, None), slice(0, 8, None), slice(0, 8, None)), (0, slice(0, 8, 4), slice(0, 8, 4)))
    >>> region_samples([(0, 4), (0, 8), (0, 8)], 4, 5) is None
    True
    """
    read: list[slice] = []
    pick: list[Any] = []
    at: list[int] = []
    bounds = [(int(lo), int(hi)) for lo, hi in bounds]
    inplane = bounds
    if plane is not None:
        lo, hi = bounds[0]
        if not lo <= plane < hi:
            return None
        read.append(slice(plane, plane + 1))
        pick.append(0)
        inplane = bounds[1:]
    for lo, hi in inplane:
        s = sample_starts(lo, hi, step)
        if s is None:
            return None
        read.append(slice(lo, hi))
        pick.append(s)
        at.append(-(-lo // step))
    return tuple(read), tuple(pick), tuple(at)


def sample_regions(
    regions: Sequence[Sequence[tuple[int, int]]],
    step: int,
    plane: int | None,
    out_path: str,
    out_token: str,
    image_reader=None,
    channel_axis: int | None = None,
) -> list[tuple[tuple[int, ...], np.ndarray, np.ndarray | None]]:
    """Strided samples of the output labels (and of the image, when ``image_reader`` is
    given: a stored image's reader; channels are reduced by their maximum) for each
    region; returns ``(position in the preview, labels, image)`` per region that holds
    samples."""
    arr = open_zarr_array_cached(out_path, out_token, "r")
    got = []
    for bounds in regions:
        rs = region_samples(bounds, step, plane)
        if rs is None:
            continue
        read, pick, at = rs
        lab = np.asarray(read_region(arr, read))[pick]
        img = None
        if image_reader is not None:
            raw = np.asarray(image_reader.read(full_slices(read, channel_axis)))
            if channel_axis is not None:
                raw = raw.max(axis=channel_axis)
            img = raw[pick]
        got.append((at, np.ascontiguousarray(lab), img))
    return got


def render_pictures(
    sampled: Sequence[list],
    preview_shape: tuple[int, int],
    labels_dtype: str,
    tile_edges: Sequence[Sequence[int]],
    tile_map: dict[str, Any],
    image_full: np.ndarray | None = None,
) -> dict[str, Any]:
    """Assemble the samples of :func:`sample_regions` (one list per batch) into the
    preview, draw it and the tile map (:mod:`blockbuster.core`), and encode both as PNG.
    ``image_full``: the whole downsampled image, for images not read region by region
    (dask and NumPy images). Returns ``{"preview": bytes, "tile_map": bytes, "preview_shape": ..., "tile_map_shape": ...}``.
    """
    from blockbuster.core import render_preview, render_tile_map
    from blockbuster.io import encode_png

    labels = np.zeros(preview_shape, np.dtype(labels_dtype))
    image = None if image_full is None else np.asarray(image_full, np.float32)
    for batch in sampled:
        for at, lab, img in batch:
            box = tuple(slice(a, a + s) for a, s in zip(at, lab.shape[-2:]))
            labels[box] = lab.reshape(lab.shape[-2:])
            if img is not None and image_full is None:
                if image is None:
                    image = np.zeros(preview_shape, np.float32)
                image[box] = img.reshape(img.shape[-2:])
    preview = render_preview(image, labels, tile_edges=tile_edges)
    tmap = render_tile_map(**tile_map)
    return {
        "preview": encode_png(preview),
        "tile_map": encode_png(tmap),
        "preview_shape": preview.shape[:2],
        "tile_map_shape": tmap.shape[:2],
    }

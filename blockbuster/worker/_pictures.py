"""What workers do for a run's pictures: keep every ``step``-th pixel of what they
already hold (:func:`sample_tile`), or, where nothing holds it any more, read it again
(:func:`sample_regions`); and draw and encode both pictures (:func:`render_pictures`).

The preview keeps every ``step``-th pixel from 0 along each in-plane axis (for 3D, of the
middle plane only). The segment stage samples each image tile it reads (the
estimate-empty stage each empty tile it reads), the relabel stage each output tile it
writes (the final ids), so a run reads nothing again for its pictures.
:func:`sample_regions` (a strided read of regions of the output and of the image, one
output chunk or shard at a time) remains for what no stage held: the image of tiles
resumed from an earlier run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from blockbuster.core import sample_starts
from blockbuster.io import full_slices, open_zarr_array_cached, read_region

__all__ = ["preview_png", "render_pictures", "sample_regions", "region_samples", "sample_tile"]


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


def sample_tile(
    bounds: Sequence[tuple[int, int]],
    preview: tuple[int, int | None],
    data: np.ndarray,
    origin: Sequence[int] | None = None,
    channel_axis: int | None = None,
) -> tuple[tuple[int, ...], np.ndarray] | None:
    """The preview's samples of the region ``bounds`` (spatial ``(lo, hi)`` per axis) from
    ``data``, an array in memory covering it from ``origin`` (default: the region's low
    corner; a tile with its halo starts lower). ``preview``: ``(step, plane)``
    (:attr:`blockbuster.core.PreviewCanvas.params`). Channels are reduced by their
    maximum. Returns ``(position in the preview, samples)``, or None when the region
    holds no sampled pixel.

    Examples
    --------
    >>> data = np.arange(100).reshape(10, 10)
    >>> at, got = sample_tile([(2, 8), (4, 10)], (4, None), data[1:9, 3:10], origin=(1, 3))
    >>> at, got.tolist()
    ((1, 1), [[44, 48]])
    """
    rs = region_samples(bounds, preview[0], preview[1])
    if rs is None:
        return None
    read, pick, at = rs
    o = [lo for lo, _ in bounds] if origin is None else [int(v) for v in origin]
    local = tuple(slice(r.start - a, r.stop - a) for r, a in zip(read, o))
    raw = data[full_slices(local, channel_axis)]
    if channel_axis is not None:
        raw = raw.max(axis=channel_axis)
    return at, np.array(raw[pick])  # a copy: ``data`` may be a buffer used again


def sample_regions(
    regions: Sequence[Sequence[tuple[int, int]]],
    step: int,
    plane: int | None,
    out_path: str | None,
    out_token: str,
    image_reader=None,
    channel_axis: int | None = None,
) -> list[tuple[tuple[int, ...], np.ndarray | None, np.ndarray | None]]:
    """Strided samples of the output labels (None: not read) and of the image (when
    ``image_reader`` is given: a stored image's reader; channels are reduced by their
    maximum) for each region; returns ``(position in the preview, labels, image)`` per
    region that holds samples."""
    arr = open_zarr_array_cached(out_path, out_token, "r") if out_path is not None else None
    got = []
    for bounds in regions:
        rs = region_samples(bounds, step, plane)
        if rs is None:
            continue
        read, pick, at = rs
        lab = None
        if arr is not None:
            lab = np.ascontiguousarray(np.asarray(read_region(arr, read))[pick])
        img = None
        if image_reader is not None:
            raw = np.asarray(image_reader.read(full_slices(read, channel_axis)))
            if channel_axis is not None:
                raw = raw.max(axis=channel_axis)
            img = raw[pick]
        got.append((at, lab, img))
    return got


def preview_png(
    labels: np.ndarray,
    *,
    image: np.ndarray | None = None,
    grey: np.ndarray | None = None,
    tile_edges: Sequence[Sequence[int]] = ((), ()),
    painted: np.ndarray | None = None,
) -> tuple[bytes, tuple[int, int]]:
    """The preview (:mod:`blockbuster.core`) as PNG bytes, and its (rows, columns): the
    labels over the image (``image``, or its ``grey`` levels computed ahead) in RGB, or,
    with neither, over black as colour indices into a palette (exact, nothing to
    quantize; ``painted``: those indices computed ahead, drawn into).

    Examples
    --------
    >>> lab = np.zeros((8, 8), np.uint32); lab[2:5, 2:5] = 3
    >>> png, shape = preview_png(lab)
    >>> png[:4], shape
    (b'\\x89PNG', (8, 8))
    """
    from blockbuster.core import render_preview, render_preview_indexed
    from blockbuster.io import encode_png

    if image is None and grey is None:
        idx, palette = render_preview_indexed(labels, tile_edges=tile_edges, painted=painted)
        return encode_png(idx, palette=palette), (idx.shape[0], idx.shape[1])
    rgb = render_preview(image, labels, tile_edges=tile_edges, grey=grey)
    return encode_png(rgb), (rgb.shape[0], rgb.shape[1])


def render_pictures(
    labels: np.ndarray | None,
    image: np.ndarray | None,
    preview_shape: Sequence[int],
    tile_edges: Sequence[Sequence[int]],
    tile_map: dict[str, Any],
) -> dict[str, Any]:
    """Draw the preview (``labels`` over ``image``, both of ``preview_shape``; None: all
    background, or black) and the tile map (:mod:`blockbuster.core`), and encode both as
    PNG. Returns ``{"preview": bytes, "tile_map": bytes, "preview_shape": ...,
    "tile_map_shape": ...}``.

    Examples
    --------
    >>> lab = np.zeros((8, 8), np.uint32); lab[2:5, 2:5] = 3
    >>> tm = {"grid_shape": (1, 1), "labels": [1], "seconds": [0.1], "skipped": [False]}
    >>> got = render_pictures(lab, None, (8, 8), [[], []], tm)
    >>> got["preview"][:4], got["preview_shape"]
    (b'\\x89PNG', (8, 8))
    """
    from blockbuster.core import render_tile_map
    from blockbuster.io import encode_png

    if labels is None:
        labels = np.zeros(tuple(preview_shape), np.uint8)
    png, shape = preview_png(labels, image=image, tile_edges=tile_edges)
    tmap = render_tile_map(**tile_map)
    return {
        "preview": png,
        "tile_map": encode_png(tmap),
        "preview_shape": shape,
        "tile_map_shape": tmap.shape[:2],
    }

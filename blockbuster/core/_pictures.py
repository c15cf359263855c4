"""Pictures of a run, as RGB arrays: a preview of the labels over the image, and a tile map.

Pure NumPy (no I/O): the caller reads a downsampled view of the image and of the output
labels (:func:`preview_step`, :func:`sample_starts` say which pixels) and the per-tile
statistics, and encodes the arrays returned here (``io``: PNG).

- :func:`render_preview`: the image in grey (contrast from its 1st-99.5th percentiles),
  each label in its own colour (:func:`label_colors`: one of 63, the same id always gets
  the same colour), label outlines drawn opaque, the tile grid drawn faintly. With no
  image under the labels (a merge's preview), :func:`render_preview_indexed` draws the
  same picture as indices into a palette of 254 colours (a palette PNG, exact).
- :func:`render_tile_map`: one cell per tile, its colour the number of labels found in
  it (dark blue few .. yellow many), a bar along its bottom the seconds spent in ``fn``
  (full width = the slowest tile), skipped tiles grey with a cross, slow tiles framed in
  red, and seams with warnings (objects wider than the halo, candidate pairs left apart)
  drawn as magenta lines on the edge the two tiles share. A 3D grid is drawn as one panel
  per layer of tiles along its first axis, side by side.

Examples
--------
>>> import numpy as np
>>> img = np.zeros((8, 8), np.uint16); lab = np.zeros((8, 8), np.uint32)
>>> lab[2:5, 2:5] = 7
>>> rgb = render_preview(img, lab, tile_edges=[[4], [4]])
>>> rgb.shape, rgb.dtype
((8, 8, 3), dtype('uint8'))
>>> bool((rgb[3, 3] != rgb[0, 0]).any())  # the label is coloured, background is not
True
>>> m = render_tile_map((2, 2), labels=[1, 2, 3, 4], seconds=[0.1, 0.1, 0.1, 2.0],
...                     skipped=[False, True, False, False], slow=[3])
>>> m.shape[2], m.dtype
(3, dtype('uint8'))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "MAX_SIDE",
    "PreviewCanvas",
    "grey_levels",
    "N_LABEL_COLORS",
    "color_index",
    "label_colors",
    "preview_palette",
    "preview_step",
    "render_preview",
    "render_preview_indexed",
    "render_tile_map",
    "sample_starts",
    "slow_tiles",
    "tile_cell_size",
    "TILE_MAP_COLORS",
]

#: longest side of a picture, in pixels
MAX_SIDE = 1024
#: Opacity of a label's colour over the image in a preview (its outline is opaque).
ALPHA = 0.45
#: Opacity of the tile grid's lines drawn over a preview.
GRID_ALPHA = 0.3
#: How many colours labels get: a hash of a label's id picks one (napari's label
#: colormap has 50). With four shades of each (inside, outline, either under a grid
#: line) and the background's two, a preview with no image under its labels fits a
#: PNG's 256-colour palette exactly: it is stored as indices (no quantizing, ~1 byte a
#: pixel to compress; see :func:`render_preview_indexed`).
N_LABEL_COLORS = 63

#: the colours of the tile map, for legends
TILE_MAP_COLORS = {
    "few labels": (68, 1, 84),
    "many labels": (253, 231, 37),
    "no labels": (40, 40, 40),
    "skipped": (150, 150, 150),
    "fn seconds bar": (255, 140, 0),
    "slow tile frame": (230, 30, 30),
    "seam warning": (255, 0, 255),
}

# viridis at 8 stops (matplotlib's values), interpolated linearly
_VIRIDIS = np.array(
    [
        (68, 1, 84),
        (70, 50, 126),
        (54, 92, 141),
        (39, 127, 142),
        (31, 161, 135),
        (74, 193, 109),
        (160, 218, 57),
        (253, 231, 37),
    ],
    dtype=np.float64,
)


def preview_step(shape: Sequence[int], max_side: int = MAX_SIDE) -> int:
    """The stride that brings the longest of ``shape``'s axes to at most ``max_side``.

    Examples
    --------
    >>> preview_step((8192, 4096)), preview_step((1000, 50)), preview_step((1025, 10))
    (8, 1, 2)
    """
    longest = max(int(s) for s in shape) if len(shape) else 1
    return max(1, math.ceil(longest / max_side))


def sample_starts(lo: int, hi: int, step: int) -> slice | None:
    """Which pixels of ``[lo, hi)`` a strided view of step ``step`` (from 0) keeps, as a
    slice relative to ``lo``; None when it keeps none.

    Examples
    --------
    >>> sample_starts(0, 10, 4), sample_starts(5, 10, 4), sample_starts(5, 7, 4)
    (slice(0, 10, 4), slice(3, 5, 4), None)
    """
    first = -(-lo // step) * step
    if first >= hi:
        return None
    return slice(first - lo, hi - lo, step)


class PreviewCanvas:
    """The preview's pixels of an image of ``shape`` (spatial), filled tile by tile.

    Every :attr:`step`-th pixel from 0 along each in-plane axis (:func:`preview_step`);
    a 3D image is previewed in its middle plane (:attr:`plane`; None for 2D). Samples
    arrive as ``(at, pixels)``: where they land (row, column) and the strided pixels.

    Examples
    --------
    >>> c = PreviewCanvas((4, 8, 8), max_side=4)
    >>> c.step, c.plane, c.shape
    (2, 2, (4, 4))
    >>> c.add_labels((0, 2), np.full((2, 2), 7, np.uint16))
    >>> c.add_image(5, (0, 2), np.ones((2, 2)))
    >>> int(c.labels.sum()), float(c.image.sum()), c.image_tiles
    (28, 4.0, {5})
    """

    def __init__(
        self, shape: Sequence[int], max_side: int = MAX_SIDE, paint: bool = False
    ) -> None:
        shape = tuple(int(s) for s in shape)
        if len(shape) not in (2, 3):
            raise ValueError(f"pictures are drawn for 2D and 3D images, not shape {shape}")
        self.plane: int | None = shape[0] // 2 if len(shape) == 3 else None
        inplane = shape[-2:]
        self.step = preview_step(inplane, max_side)
        self.shape: tuple[int, ...] = tuple(-(-s // self.step) for s in inplane)
        self.labels: NDArray[Any] | None = None
        self.image: NDArray[np.float32] | None = None
        #: the tiles whose image samples arrived
        self.image_tiles: set[int] = set()
        #: with ``paint`` (a preview with no image under the labels): the labels'
        #: colours (:func:`color_index`), painted batch by batch as the samples arrive
        #: (:meth:`paint_pending`), so that only the outlines and the grid are left to
        #: draw once the last tile is in (``render_preview_indexed(painted=)``)
        self.paint = paint
        self.painted: NDArray[np.uint8] | None = None
        self._pending: list[int] | None = None  # rows, columns added since: lo, hi, lo, hi

    @property
    def params(self) -> tuple[int, int | None]:
        """``(step, plane)``: what a worker needs to sample a tile."""
        return self.step, self.plane

    def _box(self, at: Sequence[int], pixels: NDArray[Any]) -> tuple[tuple[slice, ...], Any]:
        flat = pixels.reshape(pixels.shape[-2:])
        return tuple(slice(a, a + s) for a, s in zip(at, flat.shape)), flat

    def add_labels(self, at: Sequence[int], pixels: NDArray[Any]) -> None:
        """Label samples (final ids) landing at ``at``."""
        if self.labels is None:
            self.labels = np.zeros(self.shape, pixels.dtype)
        box, flat = self._box(at, pixels)
        self.labels[box] = flat
        if self.paint:
            r, c = box
            got = [r.start, r.stop, c.start, c.stop]
            p = self._pending
            self._pending = (
                got
                if p is None
                else [min(p[0], got[0]), max(p[1], got[1]), min(p[2], got[2]), max(p[3], got[3])]
            )

    def paint_pending(self) -> None:
        """Paint the labels added since the last call (the rectangle around them) into
        :attr:`painted`: one call per batch of tiles keeps the cost per call, not per
        tile (a 4096-tile run's tiles are 16² pixels of the preview each)."""
        if self._pending is None or self.labels is None:
            return
        r0, r1, c0, c1 = self._pending
        self._pending = None
        if self.painted is None:
            self.painted = np.zeros(self.shape, np.uint8)
        self.painted[r0:r1, c0:c1] = color_index(self.labels[r0:r1, c0:c1])

    def add_image(self, tile: int, at: Sequence[int], pixels: NDArray[Any]) -> None:
        """Image samples of tile ``tile`` (channels already reduced) landing at ``at``."""
        if self.image is None:
            self.image = np.zeros(self.shape, np.float32)
        box, flat = self._box(at, pixels)
        self.image[box] = flat
        self.image_tiles.add(int(tile))


def _hsv_to_rgb(h: NDArray[Any], s: NDArray[Any], v: NDArray[Any]) -> NDArray[Any]:
    i = np.floor(h * 6.0).astype(np.int64) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [
        np.stack(c, axis=-1)
        for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))
    ]
    out = np.zeros(h.shape + (3,), np.float64)
    for k in range(6):
        out[i == k] = choices[k][i == k]
    rgb: NDArray[np.uint8] = np.round(out * 255).astype(np.uint8)
    return rgb


def _id_hash(ids: NDArray[Any]) -> NDArray[np.uint64]:
    """splitmix64's finalizer of the ids: every bit of an id mixed into every bit."""
    h = np.asarray(ids).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)  # wraps
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    out: NDArray[np.uint64] = h ^ (h >> np.uint64(31))
    return out


def _label_palette() -> NDArray[np.uint8]:
    """The :data:`N_LABEL_COLORS` label colours (row 0: black, the background): hues a
    golden ratio apart, bright and saturated, so that any two differ."""
    k = np.arange(N_LABEL_COLORS, dtype=np.float64)
    hue = (k * 0.6180339887498949) % 1.0
    sat = 0.65 + 0.35 * ((k * 3) % 5) / 4.0
    val = 0.8 + 0.2 * ((k * 2) % 3) / 2.0
    rgb = _hsv_to_rgb(hue, sat, val)
    table: NDArray[np.uint8] = np.concatenate([np.zeros((1, 3), np.uint8), rgb])
    return table


def color_index(ids: NDArray[Any]) -> NDArray[np.uint8]:
    """Which of the :data:`N_LABEL_COLORS` colours each label id gets (1 ...
    ``N_LABEL_COLORS``; 0 for the background, id 0), by a hash of the id.

    Computed once per id (a table of every id up to the largest) when the ids are small
    next to their number, else once per pixel (the hash: ~3x slower than the look-up,
    faster than finding the distinct ids).

    Examples
    --------
    >>> color_index(np.array([0, 1, 2, 1, 10**12])).tolist()
    [0, 24, 5, 24, 35]
    """
    arr = np.asarray(ids)
    flat = arr.reshape(-1)
    top = int(flat.max()) if flat.size else 0
    small = arr.dtype.kind in "ui" and top <= 2 * flat.size + 1024
    if small and arr.dtype.kind == "i" and flat.size and int(flat.min()) < 0:
        small = False
    src = np.arange(top + 1) if small else arr
    k = (_id_hash(src) % np.uint64(N_LABEL_COLORS)).astype(np.uint8) + np.uint8(1)
    k[src == 0] = 0
    out: NDArray[np.uint8] = k[arr] if small else k
    return out


def label_colors(ids: NDArray[Any]) -> NDArray[Any]:
    """A bright colour per label id (uint8 RGB, shape ``ids.shape + (3,)``); 0 is black.

    The colour depends only on the id (a hash of it picks one of
    :data:`N_LABEL_COLORS`), so a label keeps its colour from one picture to the next,
    and neighbouring ids differ.

    Examples
    --------
    >>> c = label_colors(np.array([0, 1, 2, 1]))
    >>> c[0].tolist(), (c[1] == c[3]).all(), (c[1] != c[2]).any()
    ([0, 0, 0], np.True_, np.True_)
    """
    colors: NDArray[np.uint8] = _LABEL_RGB[color_index(ids)]
    return colors


_LABEL_RGB = _label_palette()


def grey_levels(image: NDArray[Any]) -> NDArray[np.float32]:
    """The image as float32 grey levels in [0, 255]: 1st to 99.5th percentile stretched
    (percentiles of at most ~100,000 of its pixels); what :func:`render_preview` draws
    under the labels (pass it as ``grey`` to compute it ahead).

    Examples
    --------
    >>> grey_levels(np.arange(4.0).reshape(2, 2)).round().tolist()
    [[0.0, 84.0], [170.0, 255.0]]
    """
    img = np.asarray(image, dtype=np.float32)
    flat = img.reshape(-1)
    sample = flat[:: max(1, flat.size // 100_000)]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return np.zeros(img.shape, np.float32)
    lo, hi = (float(v) for v in np.percentile(sample, (1.0, 99.5)))
    if hi <= lo:
        hi = lo + 1.0
    out = np.nan_to_num(img, nan=lo, posinf=hi, neginf=lo)
    out -= lo
    out *= 255.0 / (hi - lo)
    return np.clip(out, 0.0, 255.0, out=out)


def _outlines(labels: NDArray[Any]) -> NDArray[Any]:
    """Pixels of a label whose right or lower neighbour (or left/upper) has another id."""
    edge = np.zeros(labels.shape, bool)
    for axis in range(labels.ndim):
        a = np.swapaxes(labels, 0, axis)
        e = np.swapaxes(edge, 0, axis)
        diff = a[1:] != a[:-1]
        e[1:] |= diff
        e[:-1] |= diff
    outline: NDArray[np.bool_] = edge & (labels != 0)
    return outline


def _grid_mask(shape: tuple[int, ...], tile_edges: Sequence[Sequence[int]]) -> NDArray[np.bool_]:
    """The pixels on the tile grid's lines (rows and columns where a tile starts); a
    crossing is one pixel, drawn once."""
    mask = np.zeros(shape, bool)
    for axis, edges in enumerate(tile_edges):
        at = [int(e) for e in edges if 0 < int(e) < shape[axis]]
        if at:
            idx = (slice(None),) * axis + (np.asarray(at),)
            mask[idx] = True
    return mask


def preview_palette(alpha: float = ALPHA, grid_alpha: float = GRID_ALPHA) -> NDArray[np.uint8]:
    """The colours of :func:`render_preview_indexed`'s indices, ``(4 K + 2, 3)`` uint8
    for K = :data:`N_LABEL_COLORS`: 0 the background (black); 1..K a label's colour at
    ``alpha`` over black; K+1..2K its outline (the colour itself); then the same 2K+1
    under a grid line (``grid_alpha`` of white over them).

    Examples
    --------
    >>> pal = preview_palette()
    >>> pal.shape, pal[0].tolist(), pal[2 * N_LABEL_COLORS + 1].tolist()
    ((254, 3), [0, 0, 0], [76, 76, 76])
    """
    c = _LABEL_RGB[1:].astype(np.float64)
    base = np.concatenate([np.zeros((1, 3)), alpha * c, c])
    both = np.concatenate([base, (1 - grid_alpha) * base + grid_alpha * 255.0])
    pal: NDArray[np.uint8] = np.rint(both).astype(np.uint8)
    return pal


def render_preview_indexed(
    labels: NDArray[Any],
    *,
    tile_edges: Sequence[Sequence[int]] = ((), ()),
    alpha: float = ALPHA,
    outlines: bool = True,
    grid_alpha: float = GRID_ALPHA,
    painted: NDArray[np.uint8] | None = None,
) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """The labels over black (no image under them: a merge's preview) as colour
    indices and their palette: ``palette[indices]`` is :func:`render_preview`'s picture,
    pixel for pixel. Stored as a palette PNG, exact, with nothing to quantize.

    Parameters
    ----------
    labels : 2D integer array
        The (downsampled) labels, 0 = background.
    tile_edges, alpha, outlines, grid_alpha
        As for :func:`render_preview`.
    painted : 2D uint8 array of ``labels.shape``, optional
        :func:`color_index` of ``labels``, computed ahead (:class:`PreviewCanvas` with
        ``paint=True``); the outlines and the grid are drawn into it.

    Returns
    -------
    indices : 2D uint8 array of ``labels.shape``
    palette : (n, 3) uint8 array (:func:`preview_palette`)

    Examples
    --------
    >>> lab = np.zeros((4, 4), np.uint8); lab[1:3, 1:3] = 5
    >>> idx, pal = render_preview_indexed(lab, tile_edges=[[2], []])
    >>> (pal[idx] == render_preview(None, lab, tile_edges=[[2], []])).all()
    np.True_
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2D for a preview, got shape {labels.shape}")
    if painted is None:
        idx = color_index(labels)
    elif painted.shape != labels.shape or painted.dtype != np.uint8:
        raise ValueError(
            f"painted must be uint8 indices of the labels' shape {labels.shape}, "
            f"got {painted.dtype} {painted.shape}"
        )
    else:
        idx = painted  # drawn into
    # added as masks times a shift (~50x faster than adding through a boolean index)
    k = N_LABEL_COLORS
    if outlines:  # a label's colour -> its outline's
        idx += _outlines(labels).view(np.uint8) * np.uint8(k)
    # the same colour under a grid line
    idx += _grid_mask(labels.shape, tile_edges).view(np.uint8) * np.uint8(2 * k + 1)
    return idx, preview_palette(alpha, grid_alpha)


def render_preview(
    image: NDArray[Any] | None,
    labels: NDArray[Any],
    *,
    tile_edges: Sequence[Sequence[int]] = ((), ()),
    alpha: float = ALPHA,
    outlines: bool = True,
    grid_alpha: float = GRID_ALPHA,
    grey: NDArray[np.float32] | None = None,
) -> NDArray[Any]:
    """Labels over the image, as an RGB uint8 array of ``labels``' 2D shape.

    Parameters
    ----------
    image : 2D array or None
        The (downsampled) image; None draws the labels over black
        (:func:`render_preview_indexed`'s picture).
    labels : 2D integer array
        The (downsampled) labels, 0 = background, same shape as ``image``.
    tile_edges : two sequences of int
        Rows and columns, in ``labels``' pixels, where a tile starts (0 not needed): the
        grid lines drawn faintly (``grid_alpha``).
    alpha : float
        Opacity of the label colours inside labels; outlines are opaque.
    grey : 2D float32 array, optional
        :func:`grey_levels` of ``image``, computed ahead (``image`` is then not used).

    Examples
    --------
    >>> lab = np.zeros((4, 4), np.uint8); lab[1:3, 1:3] = 5
    >>> rgb = render_preview(None, lab)
    >>> (rgb[0, 0] == 0).all(), (rgb[1, 1] == label_colors(np.array(5))).all()
    (np.True_, np.True_)
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2D for a preview, got shape {labels.shape}")
    if image is not None and np.shape(image) != labels.shape:
        raise ValueError(f"image shape {np.shape(image)} differs from labels {labels.shape}")
    if grey is None and image is not None:
        grey = grey_levels(image)
    elif grey is not None and np.shape(grey) != labels.shape:
        raise ValueError(f"grey shape {np.shape(grey)} differs from labels {labels.shape}")
    if grey is None:
        idx, pal = render_preview_indexed(
            labels, tile_edges=tile_edges, alpha=alpha, outlines=outlines, grid_alpha=grid_alpha
        )
        over_black: NDArray[np.uint8] = pal[idx]
        return over_black
    # the labels' colours over the grey levels: each pixel's colour found once, pixels
    # addressed by flat index (~2x faster than boolean masks of the 2D arrays, on 1024²)
    colour = color_index(labels).reshape(-1)
    g = np.asarray(grey, np.float32).reshape(-1)
    rgb = np.repeat(g[:, None], 3, axis=1)
    fg = np.flatnonzero(colour)
    if fg.size:
        rgb[fg] = (1 - alpha) * g[fg, None] + alpha * _LABEL_RGB[colour[fg]].astype(np.float32)
    if outlines:  # opaque
        edge = np.flatnonzero(_outlines(labels))
        rgb[edge] = _LABEL_RGB[colour[edge]]
    on_grid = np.flatnonzero(_grid_mask(labels.shape, tile_edges))
    rgb[on_grid] = (1 - grid_alpha) * rgb[on_grid] + grid_alpha * 255.0
    drawn: NDArray[np.uint8] = np.rint(rgb, out=rgb).astype(np.uint8)
    return drawn.reshape(labels.shape + (3,))


def tile_cell_size(grid_shape: Sequence[int], max_side: int = MAX_SIDE) -> int:
    """Pixels per tile cell so that the tile map's longest side stays within ``max_side``
    (at most 48, at least 2).

    Examples
    --------
    >>> tile_cell_size((8, 8)), tile_cell_size((64, 64)), tile_cell_size((4, 16, 16))
    (48, 16, 31)
    """
    rows, cols, panels = _layout(grid_shape, 1)
    pr, pc = _panel_grid(panels)
    longest = max(rows * pr + (pr - 1), cols * pc + (pc - 1))
    return int(min(48, max(2, max_side // max(longest, 1))))


def _layout(grid_shape: Sequence[int], _cell: int) -> tuple[int, int, int]:
    g = tuple(int(s) for s in grid_shape)
    if len(g) == 1:
        return 1, g[0], 1
    if len(g) == 2:
        return g[0], g[1], 1
    if len(g) == 3:
        return g[1], g[2], g[0]
    raise ValueError(f"tile maps are drawn for 1 to 3 spatial axes, got grid {g}")


def _panel_grid(panels: int) -> tuple[int, int]:
    pc = int(math.ceil(math.sqrt(panels)))
    pr = int(math.ceil(panels / pc))
    return pr, pc


def slow_tiles(
    seconds: Sequence[float] | ArrayLike, factor: float = 3.0, min_seconds: float = 0.05
) -> list[int]:
    """Tiles whose seconds in ``fn`` exceed ``factor`` times the median of the tiles that
    ran (and ``min_seconds``).

    Examples
    --------
    >>> slow_tiles([0.1, 0.1, 0.12, 0.9, 0.0])
    [3]
    """
    s = np.asarray(seconds, dtype=np.float64)
    ran = s[s > 0]
    if ran.size == 0:
        return []
    limit = max(factor * float(np.median(ran)), min_seconds)
    return [int(i) for i in np.flatnonzero(s > limit)]


def render_tile_map(
    grid_shape: Sequence[int],
    *,
    labels: Sequence[int] | ArrayLike,
    seconds: Sequence[float] | ArrayLike,
    skipped: Sequence[bool] | ArrayLike,
    slow: Sequence[int] = (),
    seam_warnings: Sequence[tuple[int, int]] = (),
    cell: int | None = None,
) -> NDArray[Any]:
    """The tile map as an RGB uint8 array (see the module docstring for what it shows).

    Parameters
    ----------
    grid_shape : tuple of int
        Tiles per spatial axis (C order numbering, as :class:`~blockbuster.core.TileGrid`).
    labels, seconds, skipped : sequences, one entry per tile
        Labels found in the tile, seconds spent in ``fn`` on it, whether it was skipped.
    slow : sequence of int
        Tiles to frame in red (:func:`slow_tiles` picks them from ``seconds``).
    seam_warnings : sequence of (tile_a, tile_b)
        Seams to draw in magenta; only face neighbours have an edge to draw on (others
        mark the corner they share).
    cell : int, optional
        Pixels per tile (default: :func:`tile_cell_size`).

    Examples
    --------
    >>> m = render_tile_map((1, 2), labels=[0, 5], seconds=[0, 1], skipped=[True, False],
    ...                     cell=10)
    >>> m.shape
    (10, 20, 3)
    >>> m[3, 5].tolist(), m[3, 15].tolist() != m[3, 5].tolist()
    ([150, 150, 150], True)
    """
    gshape = tuple(int(s) for s in grid_shape)
    n = int(np.prod(gshape)) if gshape else 0
    labels_a = np.asarray(labels, dtype=np.float64).reshape(-1)
    seconds_a = np.asarray(seconds, dtype=np.float64).reshape(-1)
    skipped_a = np.asarray(skipped, dtype=bool).reshape(-1)
    for name, a in (("labels", labels_a), ("seconds", seconds_a), ("skipped", skipped_a)):
        if a.size != n:
            raise ValueError(f"{name} has {a.size} entries for a grid of {n} tiles {gshape}")
    if cell is None:
        cell = tile_cell_size(gshape)
    rows, cols, panels = _layout(gshape, cell)
    pr, pc = _panel_grid(panels)
    gap = 1 if panels > 1 else 0
    height = pr * rows * cell + (pr - 1) * gap
    width = pc * cols * cell + (pc - 1) * gap
    img = np.full((height, width, 3), 255, np.uint8)

    def box(t: int) -> tuple[int, int]:
        """Top-left pixel of tile t's cell."""
        idx = tuple(int(i) for i in np.unravel_index(t, gshape)) if gshape else ()
        if len(gshape) == 1:
            p, r, c = 0, 0, idx[0]
        elif len(gshape) == 2:
            p, (r, c) = 0, idx
        else:
            p, r, c = idx
        py, px = divmod(int(p), pc)
        return py * (rows * cell + gap) + int(r) * cell, px * (cols * cell + gap) + int(c) * cell

    top = float(labels_a.max()) if n else 0.0
    slowest = float(seconds_a.max()) if n else 0.0
    bar_h = max(1, cell // 5)
    border = max(1, cell // 12)
    if n:
        # a panel at a time, its tiles' values repeated into pixels: a loop over the
        # tiles took 78 ms at 4096 tiles (holding the GIL beside the run's own threads),
        # this 13 ms, the same pixels
        colors = _tile_colors(labels_a, skipped_a, top)
        x0 = 1 if cell >= 6 else 0
        yy, xx = np.arange(rows * cell), np.arange(cols * cell)
        cy, cx = yy % cell, xx % cell
        cross = (cy[:, None] == cx[None, :]) | (cx[None, :] == cell - 1 - cy[:, None])
        widths = None
        if slowest > 0 and cell >= 4:
            widths = np.where(
                seconds_a > 0, np.maximum(1, np.rint((cell - x0) * seconds_a / slowest)), 0
            ).astype(np.int64)
        bar_rows = np.flatnonzero(cy >= cell - bar_h)  # a bar along each cell's bottom

        def up(per_tile: NDArray[Any]) -> NDArray[Any]:
            """A panel's per-tile values (rows, cols, ...) as pixels."""
            return np.repeat(np.repeat(per_tile, cell, axis=0), cell, axis=1)

        for p in range(panels):
            part = slice(p * rows * cols, (p + 1) * rows * cols)
            view = up(colors[part].reshape(rows, cols, 3))
            sk = skipped_a[part].reshape(rows, cols)
            if sk.any():
                view[up(sk) & cross] = (90, 90, 90)
            if cell >= 6:  # a thin white line separates the cells
                view[::cell] = 255
                view[:, ::cell] = 255
            if widths is not None:  # seconds in fn: the bar's length
                w = widths[part].reshape(rows, cols)[bar_rows // cell]  # (bar rows, cols)
                on = (cx >= x0) & (cx < x0 + np.repeat(w, cell, axis=1))
                sub = view[bar_rows]
                sub[on] = TILE_MAP_COLORS["fn seconds bar"]
                view[bar_rows] = sub
            py, px = divmod(p, pc)
            y, x = py * (rows * cell + gap), px * (cols * cell + gap)
            img[y : y + rows * cell, x : x + cols * cell] = view
    for t in slow:
        if 0 <= int(t) < n:
            y, x = box(int(t))
            cellv = img[y : y + cell, x : x + cell]
            red = TILE_MAP_COLORS["slow tile frame"]
            cellv[:border, :] = red
            cellv[-border:, :] = red
            cellv[:, :border] = red
            cellv[:, -border:] = red
    thick = max(1, cell // 8)
    mag = TILE_MAP_COLORS["seam warning"]
    for pair in seam_warnings:
        ta, tb = int(pair[0]), int(pair[1])
        if not (0 <= ta < n and 0 <= tb < n):
            continue
        ia, ib = np.unravel_index(ta, gshape), np.unravel_index(tb, gshape)
        diff = [int(q) - int(p) for p, q in zip(ia, ib)]
        ya, xa = box(ta)
        yb, xb = box(tb)
        if len(gshape) == 3 and diff[0] != 0:
            # across layers: mark both cells' centres
            for y, x in ((ya, xa), (yb, xb)):
                c0, c1 = cell // 2 - thick, cell // 2 + thick
                img[y + c0 : y + c1, x + c0 : x + c1] = mag
            continue
        dy, dx = (yb - ya), (xb - xa)
        if dy == 0 and dx != 0:  # left-right neighbours: a vertical line
            xe = max(xa, xb)
            img[ya : ya + cell, max(xe - thick, 0) : xe + thick] = mag
        elif dx == 0 and dy != 0:  # up-down neighbours: a horizontal line
            ye = max(ya, yb)
            img[max(ye - thick, 0) : ye + thick, xa : xa + cell] = mag
        else:  # diagonal neighbours: the shared corner
            ye, xe = max(ya, yb), max(xa, xb)
            img[
                max(ye - 2 * thick, 0) : ye + 2 * thick, max(xe - 2 * thick, 0) : xe + 2 * thick
            ] = mag
    return img


def _tile_colors(
    labels: NDArray[np.float64], skipped: NDArray[np.bool_], top: float
) -> NDArray[np.uint8]:
    """Each tile's cell colour: grey when skipped, dark without labels, else the number
    of its labels on the viridis ramp (log scale, ``top`` the most of any tile)."""
    ramp = np.log1p(labels) / math.log1p(top) if top > 0 else np.zeros(labels.shape)
    f = np.clip(ramp, 0.0, 1.0).astype(np.float64) * float(len(_VIRIDIS) - 1)
    i = np.minimum(f.astype(np.int64), len(_VIRIDIS) - 2)
    c = _VIRIDIS[i] + (f - i)[:, None] * (_VIRIDIS[i + 1] - _VIRIDIS[i])
    out: NDArray[np.uint8] = np.rint(c).astype(np.uint8)
    out[labels <= 0] = TILE_MAP_COLORS["no labels"]
    out[skipped] = TILE_MAP_COLORS["skipped"]
    return out

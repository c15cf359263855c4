"""Synthetic microscopy images of nuclei, with their true labels, for tests and demos.

The images look like a fluorescence nuclear stain: bright round or ellipsoidal "nuclei"
(2D discs or 3D ellipsoids, randomly elongated and rotated, with soft edges and a slight
dome-shaped intensity profile) on a dark, noisy background. With ``touching=True`` most
nuclei sit in dense clusters where they touch or slightly overlap their neighbours, so a
plain threshold + connected components merges them and a seeded watershed is needed to
split them.

Everything is a pure function of ``(shape, options, seed)`` and of the global voxel
coordinates: the noise is a counter-based hash of the voxel index, not a stream, so any
region of a scene can be rendered on its own (:meth:`NucleiScene.render`) and the pieces
agree exactly with the whole image. That is how :func:`write_synthetic_zarr` writes
images much larger than memory, one chunk-aligned block at a time.

Intensity model (as fractions of the full scale ``scale``: the dtype's maximum for integer
dtypes, 1.0 for float dtypes):

- background level ``background`` (default 0.1) plus Gaussian noise of standard deviation
  ``noise`` (default 0.03), clipped to +-4 standard deviations, so background voxels are
  always within ``[background - 4 * noise, background + 4 * noise]``;
- nucleus interiors have brightness drawn uniformly from ``intensity`` (default
  ``(0.5, 1.0)``), falling 20 % towards the rim and ramping to the background over about
  1.5 voxels at the edge; where nuclei overlap the brighter one wins.

True labels are ``uint32``, 1..n in placement order, 0 is background; a voxel inside
several nuclei belongs to the one whose (normalised) centre it is closest to.

Examples
--------
>>> image, truth = synthetic_nuclei((96, 96), seed=1)
>>> image.shape, image.dtype, truth.dtype
((96, 96), dtype('uint16'), dtype('uint32'))
>>> int(truth.max()) == len(np.unique(truth)) - 1  # labels are 1..n
True
>>> again, _ = synthetic_nuclei((96, 96), seed=1)
>>> bool((again == image).all())  # deterministic for a seed
True
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, overload

import numpy as np
import numpy.typing

from blockbuster.errors import InvalidParameterError

from ._noise import _hash_normal
from ._place import (
    _check_shape,
    _place_nuclei,
    _sparse_box,
)

__all__ = [
    "NucleiScene",
    "nuclei_scene",
    "synthetic_nuclei",
    "sparse_nuclei",
]

#: Largest number of voxels rendered at once by :func:`synthetic_nuclei` (bounds the
#: temporary float/uint64 arrays of the renderer to a few tens of MiB).
_RENDER_BLOCK_VOXELS = 1 << 20

_EDGE = 1.5  # width (voxels) of the intensity ramp at a nucleus rim
_DOME = 0.2  # relative dimming from the centre to the rim


@dataclass
class NucleiScene:
    """A placed set of nuclei on a canvas; renders any region of the image and labels.

    Build one with :func:`nuclei_scene`. Rendering a region costs memory proportional to
    the region only, so a scene can describe an image far larger than memory.

    Attributes
    ----------
    shape : tuple of int
        Full image shape.
    centers, radii : ndarray, shape (n, ndim)
        Centre (voxel coordinates) and per-axis radii (in the nucleus' own frame).
    rotations : ndarray, shape (n, ndim, ndim)
        Rotation of each nucleus (columns are its axes in image coordinates).
    brightness : ndarray, shape (n,)
        Peak brightness of each nucleus, a fraction of ``scale``.
    seed : int
        Seed of the noise.
    dtype : numpy dtype
        Image dtype.
    background, noise : float
        Background level and noise standard deviation, fractions of ``scale``.
    signal_box : tuple of (int, int), or None
        Where the background (level and noise) is present; outside it the image is
        exactly 0 when ``outside == "zero"``. ``None``: everywhere.
    outside : {"noise", "zero"}
        What the image holds outside ``signal_box``.

    Examples
    --------
    >>> scene = nuclei_scene((64, 64), seed=3)
    >>> image, labels = scene.render()
    >>> part, part_labels = scene.render((slice(10, 40), slice(0, 64)))
    >>> bool((part == image[10:40]).all() and (part_labels == labels[10:40]).all())
    True
    """

    shape: tuple[int, ...]
    centers: np.ndarray
    radii: np.ndarray
    rotations: np.ndarray
    brightness: np.ndarray
    seed: int = 0
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.uint16))
    background: float = 0.1
    noise: float = 0.03
    signal_box: tuple[tuple[int, int], ...] | None = None
    outside: Literal["noise", "zero"] = "noise"
    _cell: float = field(default=0.0, repr=False)
    _grid: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.dtype = np.dtype(self.dtype)
        n = len(self.centers)
        reach = self.radii.max(axis=1) + _EDGE + 1.0 if n else np.zeros(0)
        self._reach = reach
        self._cell = float(max(8.0, 2.0 * reach.max())) if n else 8.0
        grid: dict[tuple[int, ...], list[int]] = {}
        for i in range(n):
            key = tuple(int(v) for v in np.floor(self.centers[i] / self._cell))
            grid.setdefault(key, []).append(i)
        self._grid = {k: np.asarray(v, dtype=np.int64) for k, v in grid.items()}

    @property
    def n_nuclei(self) -> int:
        """Number of nuclei (= the largest true label)."""
        return int(len(self.centers))

    @property
    def scale(self) -> float:
        """Full-scale value: the dtype's maximum for integer dtypes, 1.0 for floats."""
        if np.issubdtype(self.dtype, np.integer):
            return float(np.iinfo(self.dtype).max)
        return 1.0

    @property
    def background_max(self) -> float:
        """Largest value a background voxel can take, in image units (rounded up to an
        integer for integer dtypes: 14418 for uint16 with the default options)."""
        value = (self.background + 4.0 * self.noise) * self.scale
        if np.issubdtype(self.dtype, np.integer):
            return float(math.ceil(value))
        return value

    def _normalize_region(self, region: Sequence[slice] | None) -> tuple[slice, ...]:
        if region is None:
            return tuple(slice(0, s) for s in self.shape)
        if len(region) != len(self.shape):
            raise InvalidParameterError(
                f"region has {len(region)} slices but the scene has {len(self.shape)} axes; "
                "give one slice per axis"
            )
        out = []
        for sl, s in zip(region, self.shape):
            start, stop, step = sl.indices(s)
            if step != 1:
                raise InvalidParameterError("region slices must have step 1")
            out.append(slice(start, max(start, stop)))
        return tuple(out)

    def _nuclei_in(self, region: tuple[slice, ...]) -> np.ndarray:
        """Indices (sorted) of the nuclei whose bounding box meets ``region``."""
        if not self._grid:
            return np.zeros(0, dtype=np.int64)
        lo = [int(math.floor((sl.start - self._cell / 2) / self._cell)) for sl in region]
        hi = [int(math.floor((sl.stop + self._cell / 2) / self._cell)) for sl in region]
        ncells = math.prod(h - lo_ + 1 for lo_, h in zip(lo, hi))
        if ncells > len(self._grid):
            keys = [k for k in self._grid if all(a <= c <= h for c, a, h in zip(k, lo, hi))]
        else:
            keys = [
                k
                for k in itertools.product(*(range(lo_, h + 1) for lo_, h in zip(lo, hi)))
                if k in self._grid
            ]
        if not keys:
            return np.zeros(0, dtype=np.int64)
        idx = np.sort(np.concatenate([self._grid[k] for k in keys]))
        c, r = self.centers[idx], self._reach[idx, None]
        starts = np.array([sl.start for sl in region])
        stops = np.array([sl.stop for sl in region])
        keep = np.all((c + r >= starts) & (c - r < stops), axis=1)
        return idx[keep]

    @overload
    def render(
        self, region: Sequence[slice] | None = None, *, labels: Literal[True] = True
    ) -> tuple[np.ndarray, np.ndarray]: ...
    @overload
    def render(
        self, region: Sequence[slice] | None = None, *, labels: bool
    ) -> tuple[np.ndarray, np.ndarray | None]: ...
    def render(
        self, region: Sequence[slice] | None = None, *, labels: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Render the image (and true labels) of a region.

        Parameters
        ----------
        region : sequence of slice, optional
            One step-1 slice per axis; the whole canvas when omitted.
        labels : bool
            Also render the true labels (else the second value is ``None``).

        Returns
        -------
        image : ndarray of ``self.dtype``
        truth : ndarray of uint32, or None
        """
        region = self._normalize_region(region)
        rshape = tuple(sl.stop - sl.start for sl in region)
        nvox = math.prod(rshape)
        if nvox > _RENDER_BLOCK_VOXELS and rshape[0] > 1:
            # Render in slabs along the first axis to bound the float temporaries.
            image = np.empty(rshape, dtype=self.dtype)
            truth = np.empty(rshape, dtype=np.uint32) if labels else None
            step = max(1, _RENDER_BLOCK_VOXELS // max(1, nvox // rshape[0]))
            for a in range(0, rshape[0], step):
                b = min(rshape[0], a + step)
                sub = (slice(region[0].start + a, region[0].start + b),) + region[1:]
                im, lb = self._render_block(sub, labels)
                image[a:b] = im
                if truth is not None:
                    truth[a:b] = lb
            return image, truth
        return self._render_block(region, labels)

    def _render_block(
        self, region: tuple[slice, ...], want_labels: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        ndim = len(self.shape)
        rshape = tuple(sl.stop - sl.start for sl in region)
        value = np.zeros(rshape, dtype=np.float32)
        if math.prod(rshape) > 0:
            if self.noise > 0:
                noise = _hash_normal(self.seed, self.shape, region)
                np.clip(noise, -4.0, 4.0, out=noise)
                value[...] = self.background + self.noise * noise
            else:
                value[...] = self.background
            if self.signal_box is not None and self.outside == "zero":
                inside = tuple(
                    slice(max(0, lo - sl.start), max(0, min(hi, sl.stop) - sl.start))
                    for (lo, hi), sl in zip(self.signal_box, region)
                )
                kept = value[inside].copy()
                value[...] = 0.0
                value[inside] = kept
        truth = np.zeros(rshape, dtype=np.uint32) if want_labels else None
        best = np.full(rshape, np.inf, dtype=np.float32) if want_labels else None
        for i in self._nuclei_in(region):
            c, rad, rot = self.centers[i], self.radii[i], self.rotations[i]
            reach = self._reach[i]
            box = []
            for ax, sl in enumerate(region):
                lo = max(sl.start, int(math.floor(c[ax] - reach)))
                hi = min(sl.stop, int(math.ceil(c[ax] + reach)) + 1)
                if hi <= lo:
                    break
                box.append((lo, hi))
            else:
                offs = [
                    np.arange(lo, hi, dtype=np.float32) - np.float32(c[ax])
                    for ax, (lo, hi) in enumerate(box)
                ]
                grids = [
                    o.reshape([-1 if a == ax else 1 for a in range(ndim)])
                    for ax, o in enumerate(offs)
                ]
                d2 = None
                for k in range(ndim):  # coordinate along the nucleus' k-th axis
                    y = sum(grids[j] * np.float32(rot[j, k]) for j in range(ndim))
                    term = (y / np.float32(rad[k])) ** 2
                    d2 = term if d2 is None else d2 + term
                assert d2 is not None  # images have 2 or 3 axes
                d = np.sqrt(d2)
                rmean = float(np.mean(rad))
                ramp = np.clip(0.5 + (1.0 - d) * np.float32(rmean / _EDGE), 0.0, 1.0)
                dome = 1.0 - _DOME * np.minimum(d, 1.0) ** 2
                bright = np.float32(self.brightness[i]) * dome
                local = tuple(
                    slice(lo - sl.start, hi - sl.start) for (lo, hi), sl in zip(box, region)
                )
                v = value[local]
                cand = v + (bright - v) * ramp
                np.maximum(v, cand, out=v)
                if truth is not None and best is not None:  # want_labels
                    t, b = truth[local], best[local]
                    own = (d <= 1.0) & (d < b)
                    t[own] = i + 1
                    b[own] = d[own]
        scale = self.scale
        if np.issubdtype(self.dtype, np.integer):
            value *= np.float32(scale)
            np.rint(value, out=value)
            np.clip(value, 0, scale, out=value)
        else:
            np.clip(value, 0.0, 1.0, out=value)
        return value.astype(self.dtype), truth

    def iter_blocks(self, block_shape: Sequence[int]) -> Iterator[tuple[slice, ...]]:
        """Regions tiling the canvas with blocks of ``block_shape`` (edges clipped)."""
        ranges = [range(0, s, b) for s, b in zip(self.shape, block_shape)]
        for starts in itertools.product(*ranges):
            yield tuple(
                slice(a, min(a + b, s)) for a, b, s in zip(starts, block_shape, self.shape)
            )


def nuclei_scene(
    shape: Sequence[int],
    *,
    n_nuclei: int | None = None,
    radius: float | tuple[float, float] = (8.0, 14.0),
    touching: bool = True,
    density: float = 0.3,
    seed: int = 0,
    dtype: np.typing.DTypeLike = np.uint16,
    noise: float = 0.03,
    background: float = 0.1,
    intensity: tuple[float, float] = (0.5, 1.0),
    box: Sequence[tuple[int, int]] | None = None,
    outside: Literal["noise", "zero"] = "noise",
) -> NucleiScene:
    """Place nuclei on a canvas (cheap: no pixels are rendered).

    Parameters are those of :func:`synthetic_nuclei`, plus:

    Parameters
    ----------
    box : sequence of (start, stop), optional
        Place nuclei (and, with ``outside="zero"``, the background) only inside this box.
    outside : {"noise", "zero"}
        Image content outside ``box``: the noisy background, or exactly 0.

    Returns
    -------
    NucleiScene

    Examples
    --------
    >>> scene = nuclei_scene((128, 128), seed=0)
    >>> scene.n_nuclei > 10
    True
    """
    return NucleiScene(
        **_place_nuclei(
            shape,
            n_nuclei=n_nuclei,
            radius=radius,
            touching=touching,
            density=density,
            seed=seed,
            dtype=dtype,
            noise=noise,
            background=background,
            intensity=intensity,
            box=box,
            outside=outside,
        )
    )


def synthetic_nuclei(
    shape: Sequence[int],
    *,
    n_nuclei: int | None = None,
    radius: float | tuple[float, float] = (8.0, 14.0),
    touching: bool = True,
    density: float = 0.3,
    seed: int = 0,
    dtype: np.typing.DTypeLike = np.uint16,
    noise: float = 0.03,
    background: float = 0.1,
    intensity: tuple[float, float] = (0.5, 1.0),
) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic nuclear-stain image and its true labels, 2D or 3D.

    Parameters
    ----------
    shape : tuple of int
        Image shape, 2 or 3 axes.
    n_nuclei : int, optional
        How many nuclei to place. Default: as many as cover about ``density`` of the
        canvas. Fewer are placed when the canvas is too crowded for more.
    radius : float or (float, float)
        Range of the mean nucleus radius in voxels (each axis varies by +-20 % around it).
    touching : bool
        Place nuclei in dense clusters (2 to 8 nuclei) where neighbours touch and overlap
        slightly, so that thresholding alone merges them. ``False``: every nucleus is
        separated from the others by at least 3 background voxels.
    density : float
        Target fraction of the canvas covered by nuclei when ``n_nuclei`` is not given.
    seed : int
        Seed of the placement and the noise; same seed, same image.
    dtype : numpy dtype
        Image dtype. Integer dtypes use their full range (``scale`` = dtype maximum);
        float dtypes lie in [0, 1].
    noise : float
        Standard deviation of the Gaussian background noise, a fraction of full scale
        (clipped to +-4 standard deviations).
    background : float
        Background level, a fraction of full scale.
    intensity : (float, float)
        Range of the nuclei's peak brightness, fractions of full scale.

    Returns
    -------
    image : ndarray of ``dtype``
    truth : ndarray of uint32
        True labels 1..n, 0 is background.

    Notes
    -----
    Memory: the image and the labels, plus float temporaries of at most ~1 Mi voxels
    (rendering is done in slabs and per nucleus in its bounding box). For images larger
    than memory use :func:`write_synthetic_zarr` or :meth:`NucleiScene.render` on regions.

    Examples
    --------
    >>> image, truth = synthetic_nuclei((32, 48, 48), radius=(5, 7), seed=0)
    >>> image.shape == truth.shape == (32, 48, 48)
    True
    >>> bool(image[truth > 0].mean() > 3 * image[truth == 0].mean())
    True
    """
    scene = nuclei_scene(
        shape,
        n_nuclei=n_nuclei,
        radius=radius,
        touching=touching,
        density=density,
        seed=seed,
        dtype=dtype,
        noise=noise,
        background=background,
        intensity=intensity,
    )
    return scene.render()


def sparse_nuclei(
    shape: Sequence[int],
    corner_fraction: float = 0.25,
    seed: int = 0,
    *,
    outside: Literal["zero", "noise"] = "zero",
    **options,
) -> tuple[np.ndarray, np.ndarray]:
    """Nuclei only in one corner of a large canvas; the rest is empty (for empty-tile tests).

    The "corner" is the box ``[0, ceil(corner_fraction * shape[i]))`` along every axis
    (so ``corner_fraction=0.25`` covers 1/16 of a 2D canvas, 1/64 of a 3D one). Inside it
    the image is like :func:`synthetic_nuclei` (noisy background plus nuclei).

    Background outside the corner box:

    - ``outside="zero"`` (default): exactly 0;
    - ``outside="noise"``: the same noisy background as inside, whose values never exceed
      ``(background + 4 * noise) * scale`` (0.22 of full scale with the defaults; 14418
      for uint16), far below the dimmest nucleus (``intensity[0]``, 0.5 of full scale).

    So with the defaults every tile outside the corner box is empty for any threshold
    ``>= 0`` (``outside="zero"``) or ``>= 0.22 * scale`` (``outside="noise"``).

    Parameters
    ----------
    shape : tuple of int
        Canvas shape, 2 or 3 axes.
    corner_fraction : float
        Extent of the populated corner box, a fraction of each axis, in (0, 1].
    seed : int
        Seed of the placement and the noise.
    outside : {"zero", "noise"}
        What the canvas holds outside the corner box.
    **options
        Other options of :func:`synthetic_nuclei` (``radius``, ``touching``, ``dtype``,
        ``noise``, ``background``, ``intensity``, ``n_nuclei``, ``density``).

    Returns
    -------
    image : ndarray
    truth : ndarray of uint32

    Examples
    --------
    >>> image, truth = sparse_nuclei((128, 128), corner_fraction=0.5, radius=(4, 6))
    >>> int(image[64:, :].max()), int(image[:, 64:].max())
    (0, 0)
    >>> bool(truth[:64, :64].max() > 0)
    True
    """
    shape = _check_shape(shape)
    box = _sparse_box(shape, corner_fraction)
    scene = nuclei_scene(shape, seed=seed, box=box, outside=outside, **options)
    return scene.render()

"""Scene generation for the synthetic images: checking the options and placing the
nuclei (centres, radii, rotations, brightness) on the canvas; no pixels are rendered.

:func:`blockbuster.synthetic.nuclei_scene` wraps :func:`_place_nuclei` into a
:class:`~blockbuster.synthetic.NucleiScene`.

Examples
--------
>>> kw = _place_nuclei((64, 64), n_nuclei=5, radius=(4, 6), touching=False, density=0.3,
...                    seed=0, dtype=np.uint16, noise=0.03, background=0.1,
...                    intensity=(0.5, 1.0), box=None, outside="noise")
>>> kw["centers"].shape, kw["rotations"].shape
((5, 2), (5, 2, 2))
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing

from blockbuster.errors import InvalidParameterError

__all__: list[str] = []

_ECCENTRICITY = 0.2  # axis radii vary by +-20 % around the mean radius
_CLUSTER_SIZE = (1, 6)  # nuclei per cluster when touching=True (inclusive range)
_TOUCH = (0.8, 0.95)  # centre distance / (r_a + r_b) inside a cluster
_MIN_SEPARATION = 0.78  # never closer than this fraction of (r_a + r_b)
_GAP = 3.0  # voxels between nuclei when touching=False


def _random_rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    """A uniformly random rotation matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError as exc:
        raise InvalidParameterError(
            f"shape={shape!r} must be a tuple of ints such as (512, 512) or (64, 256, 256)"
        ) from exc
    if len(shape) not in (2, 3) or any(s < 1 for s in shape):
        raise InvalidParameterError(
            f"shape={shape!r} must have 2 or 3 positive axes, e.g. (512, 512) or (64, 256, 256)"
        )
    return shape


def _check_radius(radius: float | tuple[float, float]) -> tuple[float, float]:
    value: Any = radius  # a number or a pair; anything else fails in float()
    if bool(np.isscalar(value)):  # (bool(): keep value Any, not numpy's scalar union)
        value = (float(value), float(value))
    lo, hi = (float(r) for r in value)
    if not (1.0 <= lo <= hi):
        raise InvalidParameterError(
            f"radius={value!r} must be a number >= 1 or a (min, max) pair with 1 <= min <= max"
        )
    return lo, hi


def _sparse_box(shape: tuple[int, ...], corner_fraction: float) -> tuple[tuple[int, int], ...]:
    if not 0 < corner_fraction <= 1:
        raise InvalidParameterError(
            f"corner_fraction={corner_fraction!r} must be in (0, 1] (a fraction of each axis)"
        )
    return tuple((0, max(1, int(math.ceil(corner_fraction * s)))) for s in shape)


def _place_nuclei(
    shape: Sequence[int],
    *,
    n_nuclei: int | None,
    radius: float | tuple[float, float],
    touching: bool,
    density: float,
    seed: int,
    dtype: np.typing.DTypeLike,
    noise: float,
    background: float,
    intensity: tuple[float, float],
    box: Sequence[tuple[int, int]] | None,
    outside: Literal["noise", "zero"],
) -> dict[str, Any]:
    """Check the options of :func:`~blockbuster.synthetic.nuclei_scene` and place the
    nuclei; returns the keyword arguments of :class:`~blockbuster.synthetic.NucleiScene`.
    """
    shape = _check_shape(shape)
    lo_r, hi_r = _check_radius(radius)
    ndim = len(shape)
    if not 0 < density <= 0.9:
        raise InvalidParameterError(f"density={density!r} must be in (0, 0.9]")
    if noise < 0 or not 0 <= background < 1:
        raise InvalidParameterError(
            f"noise={noise!r} must be >= 0 and background={background!r} in [0, 1)"
        )
    i_lo, i_hi = (float(v) for v in intensity)
    if not (background < i_lo <= i_hi <= 1.0):
        raise InvalidParameterError(
            f"intensity={intensity!r} must be a (min, max) pair with "
            f"background ({background}) < min <= max <= 1"
        )
    if outside not in ("noise", "zero"):
        raise InvalidParameterError(f"outside={outside!r} must be 'noise' or 'zero'")
    if box is None:
        box_t = tuple((0, s) for s in shape)
    else:
        box_t = tuple((max(0, int(a)), min(s, int(b))) for (a, b), s in zip(box, shape))
        if len(box_t) != ndim or any(b <= a for a, b in box_t):
            raise InvalidParameterError(
                f"box={box!r} must give a non-empty (start, stop) per axis"
            )
    rng = np.random.default_rng(seed)
    box_lo = np.array([a for a, _ in box_t], dtype=float)
    box_hi = np.array([b for _, b in box_t], dtype=float)
    box_vol = float(np.prod(box_hi - box_lo))
    mean_r = 0.5 * (lo_r + hi_r)
    unit_vol = math.pi if ndim == 2 else 4.0 / 3.0 * math.pi
    if n_nuclei is None:
        n_target = max(1, int(round(density * box_vol / (unit_vol * mean_r**ndim))))
    else:
        n_target = int(n_nuclei)
        if n_target < 0:
            raise InvalidParameterError(f"n_nuclei={n_nuclei!r} must be >= 0")

    max_r_factor = 1.0 + _ECCENTRICITY
    cell = 2.0 * hi_r * max_r_factor + _GAP + 1.0
    grid: dict[tuple[int, ...], list[int]] = {}
    centers: list[np.ndarray] = []
    rmeans: list[float] = []
    radii: list[np.ndarray] = []
    rots: list[np.ndarray] = []

    def fits(c: np.ndarray, r: float, rmax: float, ignore_bounds: bool = False) -> bool:
        if not ignore_bounds and (np.any(c - rmax - 1 < box_lo) or np.any(c + rmax + 1 > box_hi)):
            return False
        key = np.floor(c / cell).astype(int)
        for off in itertools.product((-1, 0, 1), repeat=ndim):
            for j in grid.get(tuple(key + off), ()):
                dist = float(np.sqrt(np.sum((centers[j] - c) ** 2)))
                if touching:
                    if dist < _MIN_SEPARATION * (r + rmeans[j]):
                        return False
                elif dist < max_r_factor * (r + rmeans[j]) + _GAP:
                    return False
        return True

    def add(c: np.ndarray, r: float, axes: np.ndarray, rot: np.ndarray) -> None:
        grid.setdefault(tuple(np.floor(c / cell).astype(int)), []).append(len(centers))
        centers.append(c)
        rmeans.append(r)
        radii.append(axes)
        rots.append(rot)

    def draw() -> tuple[float, np.ndarray, np.ndarray]:
        r = float(rng.uniform(lo_r, hi_r))
        axes = r * (1.0 + rng.uniform(-_ECCENTRICITY, _ECCENTRICITY, size=ndim))
        return r, axes, _random_rotation(rng, ndim)

    attempts, max_attempts = 0, 30 * n_target + 200
    while len(centers) < n_target and attempts < max_attempts:
        attempts += 1
        r, axes, rot = draw()
        rmax = float(axes.max())
        c = rng.uniform(box_lo + rmax + 1, np.maximum(box_lo + rmax + 1, box_hi - rmax - 1))
        if not fits(c, r, rmax):
            continue
        add(c, r, axes, rot)
        if not touching:
            continue
        members = [len(centers) - 1]
        size = int(rng.integers(_CLUSTER_SIZE[0], _CLUSTER_SIZE[1] + 1))
        tries = 0
        while len(members) < size and len(centers) < n_target and tries < 10 * size:
            tries += 1
            m = members[int(rng.integers(len(members)))]
            r, axes, rot = draw()
            u = rng.normal(size=ndim)
            u /= np.linalg.norm(u) or 1.0
            c = centers[m] + u * (rmeans[m] + r) * rng.uniform(*_TOUCH)
            if fits(c, r, float(axes.max())):
                add(c, r, axes, rot)
                members.append(len(centers) - 1)

    n = len(centers)
    return dict(
        shape=shape,
        centers=np.array(centers, dtype=np.float64).reshape(n, ndim),
        radii=np.array(radii, dtype=np.float64).reshape(n, ndim),
        rotations=np.array(rots, dtype=np.float64).reshape(n, ndim, ndim),
        brightness=rng.uniform(i_lo, i_hi, size=n),
        seed=int(seed),
        dtype=np.dtype(dtype),
        background=float(background),
        noise=float(noise),
        signal_box=None if box is None else box_t,
        outside=outside,
    )

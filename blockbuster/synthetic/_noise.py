"""Counter-based Gaussian noise for the synthetic images: a pure function of
``(seed, global voxel index)``, so any region renders the same values as the whole.

Examples
--------
>>> a = _hash_normal(7, (8, 8), (slice(0, 8), slice(0, 8)))
>>> b = _hash_normal(7, (8, 8), (slice(2, 5), slice(3, 8)))
>>> bool((a[2:5, 3:8] == b).all())
True
"""

from __future__ import annotations

import numpy as np

__all__: list[str] = []

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijective, well-mixing hash of uint64 values."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def _hash_normal(seed: int, shape: tuple[int, ...], region: tuple[slice, ...]) -> np.ndarray:
    """Standard normal noise that is a pure function of (seed, global voxel index).

    Box-Muller on two independent hashes of the global linear index, so the value at a
    voxel does not depend on which region it was rendered with.
    """
    with np.errstate(over="ignore"):
        idx = np.zeros((1,) * len(shape), dtype=np.uint64)
        stride = 1
        for ax in range(len(shape) - 1, -1, -1):
            sl = region[ax]
            coords = np.arange(sl.start, sl.stop, dtype=np.uint64) * np.uint64(stride)
            idx = idx + coords.reshape([-1 if a == ax else 1 for a in range(len(shape))])
            stride *= shape[ax]
        key = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
        base = (idx << np.uint64(1)) ^ key
        h1 = _splitmix64(base)
        h2 = _splitmix64(base | np.uint64(1))
    u1 = ((h1 >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / (1 << 53))
    u2 = (h2 >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    out = np.sqrt(-2.0 * np.log(u1))
    out *= np.cos(2.0 * np.pi * u2)
    return out

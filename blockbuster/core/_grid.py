"""The tile grid: tile cores, clipped halos and forward neighbours.

A grid covers the *spatial* axes of an image with tiles of ``tile_shape`` (the last tile
along an axis may be smaller when the shape is not divisible). Each tile has a *core*
(the region whose labels it owns) and an *extended* region, the core grown by
``overlap`` on each side and clipped at the image edge (never padded).

Tiles are numbered in C order over the grid. Neighbour offsets ``delta`` have entries in
{-1, 0, 1}; the *forward* ones are those whose first non-zero entry is +1, so that each
adjacent pair of tiles is visited exactly once.

Examples
--------
>>> g = TileGrid(shape=(10, 7), tile_shape=(4, 4), overlap=(1, 1))
>>> g.grid_shape, g.n_tiles
((3, 2), 6)
>>> g.core_slices(5)
(slice(8, 10, None), slice(4, 7, None))
>>> g.ext_slices(0)
(slice(0, 5, None), slice(0, 5, None))
>>> [(g.tile_index(n), d) for n, d in g.forward_neighbours(0)]
[((0, 1), (0, 1)), ((1, 0), (1, 0)), ((1, 1), (1, 1))]
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

__all__ = ["TileGrid", "forward_offsets"]


def forward_offsets(ndim: int) -> list[tuple[int, ...]]:
    """All offsets in {-1, 0, 1}^ndim whose first non-zero entry is +1."""
    out = []
    for delta in itertools.product((-1, 0, 1), repeat=ndim):
        nz = [d for d in delta if d != 0]
        if nz and nz[0] == 1:
            out.append(delta)
    return out


@dataclass(frozen=True)
class TileGrid:
    """A regular grid of tiles over a spatial shape.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape of the image.
    tile_shape : tuple of int
        Spatial shape of a tile core (edge tiles are clipped).
    overlap : tuple of int
        Halo width per spatial axis.
    """

    shape: tuple[int, ...]
    tile_shape: tuple[int, ...]
    overlap: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "tile_shape", tuple(int(t) for t in self.tile_shape))
        ov = self.overlap or (0,) * len(self.shape)
        object.__setattr__(self, "overlap", tuple(int(o) for o in ov))
        if not (len(self.shape) == len(self.tile_shape) == len(self.overlap)):
            raise ValueError("shape, tile_shape and overlap must have one entry per axis")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @cached_property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(max(1, math.ceil(s / t)) for s, t in zip(self.shape, self.tile_shape))

    @cached_property
    def n_tiles(self) -> int:
        return math.prod(self.grid_shape)

    @cached_property
    def tile_voxels(self) -> int:
        """Voxels of a whole (unclipped) tile core."""
        return math.prod(self.tile_shape)

    def tile_index(self, n: int) -> tuple[int, ...]:
        """Grid position of tile number ``n`` (C order; plain integer arithmetic, called
        several times per tile)."""
        n = int(n)
        if not 0 <= n < self.n_tiles:
            raise ValueError(f"tile number {n} is outside a grid of {self.n_tiles} tiles")
        idx = []
        for g in reversed(self.grid_shape):
            n, i = divmod(n, g)
            idx.append(i)
        return tuple(reversed(idx))

    def tile_number(self, index: tuple[int, ...]) -> int:
        """Tile number of grid position ``index``."""
        n = 0
        for i, g in zip(index, self.grid_shape, strict=True):
            i = int(i)
            if not 0 <= i < g:
                raise ValueError(
                    f"grid position {tuple(index)} is outside the grid {self.grid_shape}"
                )
            n = n * g + i
        return n

    def core_bounds(self, n: int) -> tuple[tuple[int, int], ...]:
        idx = self.tile_index(n)
        return tuple(
            (i * t, min((i + 1) * t, s)) for i, t, s in zip(idx, self.tile_shape, self.shape)
        )

    def ext_bounds(self, n: int) -> tuple[tuple[int, int], ...]:
        return tuple(
            (max(0, lo - o), min(s, hi + o))
            for (lo, hi), o, s in zip(self.core_bounds(n), self.overlap, self.shape)
        )

    def core_slices(self, n: int) -> tuple[slice, ...]:
        return tuple(slice(lo, hi) for lo, hi in self.core_bounds(n))

    def ext_slices(self, n: int) -> tuple[slice, ...]:
        return tuple(slice(lo, hi) for lo, hi in self.ext_bounds(n))

    def core_in_ext(self, n: int) -> tuple[slice, ...]:
        """Where the core lies inside the extended region (the crop applied to fn's output)."""
        return tuple(
            slice(c0 - e0, c1 - e0)
            for (c0, c1), (e0, _) in zip(self.core_bounds(n), self.ext_bounds(n))
        )

    def origin(self, n: int) -> tuple[int, ...]:
        return tuple(lo for lo, _ in self.core_bounds(n))

    def core_shape(self, n: int) -> tuple[int, ...]:
        return tuple(hi - lo for lo, hi in self.core_bounds(n))

    def ext_shape(self, n: int) -> tuple[int, ...]:
        return tuple(hi - lo for lo, hi in self.ext_bounds(n))

    @cached_property
    def _forward(self) -> list[tuple[int, ...]]:
        return forward_offsets(self.ndim)

    def forward_neighbours(
        self, n: int, max_order: int | None = None
    ) -> Iterator[tuple[int, tuple[int, ...]]]:
        """Yield ``(neighbour_number, delta)`` for the forward neighbours of tile ``n``.

        ``max_order`` limits the number of non-zero entries of ``delta`` (1 = face
        neighbours only, ndim = all, corners included).
        """
        idx = self.tile_index(n)
        for delta in self._forward:
            if max_order is not None and sum(d != 0 for d in delta) > max_order:
                continue
            nb = tuple(i + d for i, d in zip(idx, delta))
            if all(0 <= j < g for j, g in zip(nb, self.grid_shape)):
                yield self.tile_number(nb), delta

    def describe(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "tile_shape": list(self.tile_shape),
            "overlap": list(self.overlap),
            "grid_shape": list(self.grid_shape),
            "n_tiles": self.n_tiles,
        }

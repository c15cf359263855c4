"""Validating a run's parameters and fixing everything about it before any work starts.

:func:`make_plan` checks every parameter against the image (clear errors naming the
parameter and the fix), decides the tile grid, the merge mode and the
identity of the run (its *run key*), and returns a :class:`RunPlan` — a small, picklable
description shared by the driver and the workers.

Examples
--------
>>> import numpy as np
>>> from blockbuster.io import open_image
>>> src = open_image(np.zeros((100, 80), np.uint8))
>>> p = make_plan(src, fn_id="f", tile_shape=(32, 32), overlap=0)
>>> p.grid.grid_shape, p.merge
((4, 3), 'touch')
>>> make_plan(src, fn_id="f", tile_shape=(0, 32))
Traceback (most recent call last):
...
blockbuster.errors.InvalidParameterError: tile_shape=(0, 32): every entry must be a positive int; e.g. tile_shape=(100, 80)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from blockbuster.io import ImageSource

import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from blockbuster.errors import InvalidParameterError, ParameterTypeError

from ._grid import TileGrid
from ._identity import run_key as _run_key

__all__ = [
    "RunPlan",
    "make_plan",
    "normalize_tile_shape",
    "normalize_overlap",
    "MERGE_MODES",
    "MAX_TILES",
]

MERGE_MODES = ("auto", "touch", "overlap")

#: Default most tiles in one plan: 2**23, enough for 1 PiB of uint8 in 512^3 tiles
#: (2**50 / 2**27). A plan beyond it is refused before the grid is built (a typo such as
#: ``tile_shape=(1, 1)`` would otherwise plan 10**10 tiles in the driver).
MAX_TILES = 2**23


@dataclass(frozen=True)
class RunPlan:
    """Everything fixed about a run (cheap to pickle; shipped with every batch)."""

    grid: TileGrid
    channel_axis: int | None
    merge: str
    connectivity: int
    iou_threshold: float
    skip_empty: bool
    empty_threshold: float | None
    sequential: bool
    retries: int
    retry_delay: float
    run_key: str
    staging_root: str = ""
    # merge of stored labels: stage only what the seam scan needs and read the labels
    # again from the input when relabelling (core/tile_ops.py)
    read_back: bool = False
    # read_back merges of small tiles: the grid's tiles are merge units made of whole
    # tiles of this shape (core/units.py); None: the grid's tiles are the tiles
    unit_tile_shape: tuple[int, ...] | None = None
    # False for a call whose output and staging live in a temporary folder removed at
    # exit (no write_to, no staging=): a crash redoes all of it whatever was written,
    # so nothing of it is fsync-ed
    durable: bool = True
    # the generation of an object store staging, known once the driver has prepared it:
    # a worker's batch opens the staging without reading its staging.json (one GET a
    # batch). A local staging reads its own (its generation changes when a corrupt
    # record is dropped, mid-run); "": read it
    staging_generation: str = ""
    description: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def out_chunks(self) -> tuple[int, ...]:
        """Chunks of the output: the tiles (those inside merge units included)."""
        return self.unit_tile_shape or self.grid.tile_shape

    @property
    def out_shards(self) -> tuple[int, ...] | None:
        """Shards of a zarr v3 output: one per merge unit (None without units)."""
        if self.unit_tile_shape is None:
            return None
        return tuple(-(-u // t) * t for u, t in zip(self.grid.tile_shape, self.unit_tile_shape))

    @property
    def ndim(self) -> int:
        return self.grid.ndim

    @property
    def result_key(self) -> str:
        """Identity of the final output: the run key plus how labels are numbered."""
        return f"{self.run_key}-{'seq' if self.sequential else 'ids'}"


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def normalize_tile_shape(tile_shape: Any, src: ImageSource) -> tuple[int, ...]:
    """Spatial tile shape from one int per image axis (channel axis included) or per
    spatial axis; entries larger than the image are clipped to it."""
    spatial = src.spatial_shape
    example = ", ".join(str(min(s, 512)) for s in spatial)
    fix = f"e.g. tile_shape=({example})"
    if _is_int(tile_shape):
        tile_shape = (tile_shape,) * len(spatial)
    try:
        ts = tuple(tile_shape)
    except TypeError:
        raise InvalidParameterError(
            f"tile_shape={tile_shape!r} is not 'auto', an int or a tuple of ints; {fix}"
        ) from None
    if len(ts) == src.ndim and src.channel_axis is not None:
        ch = ts[src.channel_axis]
        if not _is_int(ch) or ch not in (src.shape[src.channel_axis], -1):
            raise InvalidParameterError(
                f"tile_shape={tile_shape!r}: the channel axis ({src.channel_axis}) must take its "
                f"whole extent ({src.shape[src.channel_axis]}), or give spatial axes only; {fix}"
            )
        ts = tuple(t for i, t in enumerate(ts) if i != src.channel_axis)
    if len(ts) != len(spatial):
        raise InvalidParameterError(
            f"tile_shape={tile_shape!r} has {len(ts)} entries but the image has "
            f"{len(spatial)} spatial axes (shape {src.shape}, channel_axis={src.channel_axis}); {fix}"
        )
    if not all(_is_int(t) and t > 0 for t in ts):
        raise InvalidParameterError(
            f"tile_shape={tile_shape!r}: every entry must be a positive int; {fix}"
        )
    return tuple(int(min(t, s)) if s > 0 else int(t) for t, s in zip(ts, spatial))


def normalize_overlap(
    overlap: Any, src: ImageSource, tile_shape: Sequence[int] | None = None
) -> tuple[int, ...]:
    """Spatial halo widths from an int or one int per image (or spatial) axis.

    An int applies to the axes whose tile extent (``tile_shape``, spatial, when known)
    is greater than one: one-plane tiles, ``tile_shape=(1, Y, X)``, get one-plane
    blocks with an in-plane halo, so a 2D function is given 2D work. A per-axis
    overlap is taken as given (it overrides this rule, e.g. ``overlap=(2, 20, 20)``
    for a z halo around one-plane tiles).
    """
    spatial = src.spatial_shape
    if _is_int(overlap):
        ov = (int(overlap),) * len(spatial)
        if tile_shape is not None:
            ov = tuple(0 if int(t) == 1 else o for o, t in zip(ov, tile_shape))
    else:
        try:
            ov = tuple(overlap)
        except TypeError:
            raise InvalidParameterError(
                f"overlap={overlap!r} is not an int or a tuple of ints; e.g. overlap=16"
            ) from None
        if len(ov) == src.ndim and src.channel_axis is not None:
            if ov[src.channel_axis] not in (0,):
                raise InvalidParameterError(
                    f"overlap={overlap!r}: the channel axis ({src.channel_axis}) takes no halo; "
                    "set its entry to 0 or give spatial axes only"
                )
            ov = tuple(o for i, o in enumerate(ov) if i != src.channel_axis)
        if len(ov) != len(spatial):
            raise InvalidParameterError(
                f"overlap={overlap!r} has {len(ov)} entries but the image has {len(spatial)} "
                "spatial axes; give one int or one per axis"
            )
    if not all(_is_int(o) and o >= 0 for o in ov):
        raise InvalidParameterError(f"overlap={overlap!r}: entries must be ints >= 0")
    for o, s in zip(ov, spatial):
        if o > s:
            raise InvalidParameterError(
                f"overlap={overlap!r} is larger than the image (spatial shape {spatial}); a "
                "halo wider than the image only repeats it: use a smaller overlap, e.g. "
                "about one object diameter"
            )
    return tuple(int(o) for o in ov)


def make_plan(
    src: ImageSource,
    *,
    fn_id: str,
    tile_shape: Sequence[int] | int,
    overlap: int | Sequence[int] = 0,
    merge: str = "auto",
    connectivity: int = 1,
    iou_threshold: float = 0.5,
    skip_empty: bool = False,
    empty_threshold: float | None = None,
    sequential_labels: bool = False,
    retries: int = 2,
    retry_delay: float = 1.0,
    read_back: bool = False,
    units: str | Sequence[int] | None = "auto",
    extra_identity: dict[str, Any] | None = None,
    max_tiles: int = MAX_TILES,
) -> RunPlan:
    """Validate the parameters of a run against ``src`` and fix the run (see module doc).

    ``units`` (``read_back`` only): merge units of small tiles (core/units.py):
    ``"auto"`` (:func:`~blockbuster.core.unit_tiles` for this machine), None (no
    units), or the tiles per unit along each spatial axis.
    """
    spatial = src.spatial_shape
    nsp = len(spatial)
    if nsp < 1:
        raise InvalidParameterError(
            f"the image has no spatial axis (shape {src.shape}, channel_axis={src.channel_axis})"
        )
    if any(s == 0 for s in spatial):
        raise InvalidParameterError(f"the image is empty (shape {src.shape}); nothing to tile")
    ts = normalize_tile_shape(tile_shape, src)
    n_tiles = 1
    for s, t in zip(spatial, ts):
        n_tiles *= -(-s // t)
    if n_tiles > max_tiles:
        grow = math.ceil((n_tiles / max_tiles) ** (1 / nsp)) + 1
        fit = tuple(min(s, t * grow) for s, t in zip(spatial, ts))
        raise InvalidParameterError(
            f"tile_shape={tuple(ts)} makes {n_tiles} tiles of the image {spatial}, more than "
            f"the limit of {max_tiles}: use larger tiles (e.g. tile_shape={fit} or 'auto'), "
            "or raise dask config 'blockbuster.max-tiles'"
        )
    ov = normalize_overlap(overlap, src, ts)
    if merge not in MERGE_MODES:
        raise InvalidParameterError(f"merge={merge!r} is not one of {MERGE_MODES}")
    if merge == "auto":
        merge = "overlap" if any(ov) else "touch"
    if merge == "overlap" and not any(ov):
        raise InvalidParameterError(
            "merge='overlap' needs a halo to match labels in, but overlap=0; pass e.g. "
            "overlap=32 (about one object diameter), or use merge='touch'"
        )
    if not _is_int(connectivity) or not 1 <= connectivity <= nsp:
        raise InvalidParameterError(
            f"connectivity={connectivity!r} must be an int from 1 (faces) to {nsp} (full, "
            f"corners included) for an image with {nsp} spatial axes"
        )
    if not isinstance(iou_threshold, numbers.Real) or not 0 < float(iou_threshold) <= 1:
        # NaN and inf fail the range check too
        raise InvalidParameterError(
            f"iou_threshold={iou_threshold!r} must be a number in (0, 1]; e.g. 0.5"
        )
    if empty_threshold is not None and (
        not isinstance(empty_threshold, numbers.Real) or isinstance(empty_threshold, bool)
    ):
        raise ParameterTypeError(
            f"empty_threshold={empty_threshold!r} must be a number or None (estimate it)"
        )
    if empty_threshold is not None and not math.isfinite(float(empty_threshold)):
        raise InvalidParameterError(
            f"empty_threshold={empty_threshold!r} must be a finite number (NaN would mark "
            "every tile empty); give a pixel value, or None to estimate it"
        )
    if not _is_int(retries) or retries < 0:
        raise InvalidParameterError(f"retries={retries!r} must be an int >= 0")
    if not (
        units is None
        or units == "auto"
        or (
            isinstance(units, (tuple, list))
            and len(units) == nsp
            and all(_is_int(u) and u >= 1 for u in units)
        )
    ):
        raise InvalidParameterError(
            f"units={units!r} must be 'auto', None or {nsp} ints >= 1 (tiles per merge "
            "unit along each spatial axis)"
        )
    if read_back and (merge != "touch" or any(ov)):
        raise InvalidParameterError(
            "read_back=True (relabel from the input itself) is for a touch merge of stored "
            f"labels without a halo; got merge={merge!r}, overlap={ov}"
        )
    grid = TileGrid(spatial, ts, ov)
    unit_ts, per_unit = None, None
    if read_back and units is not None and nsp >= 2:
        from ._merge_units import UNIT_VOXELS, unit_tiles

        per_unit = (
            tuple(units)
            if units != "auto"
            else unit_tiles(
                spatial, ts, unit_voxels=UNIT_VOXELS, min_units=4 * (os.cpu_count() or 1)
            )
        )
        if any(p > 1 for p in per_unit):
            unit_ts = ts
            grid = TileGrid(
                spatial, tuple(min(t * p, s) for t, p, s in zip(ts, per_unit, spatial)), ov
            )
    desc = {
        "input": src.identity(),
        "fn": fn_id,
        "grid": grid.describe(),
        "channel_axis": src.channel_axis,
        "merge": merge,
        "connectivity": int(connectivity),
        "iou_threshold": float(iou_threshold) if merge == "overlap" else None,
        "skip_empty": bool(skip_empty),
        "empty_threshold": None if empty_threshold is None else float(empty_threshold),
        "format": 2,
        **({"read_back": True} if read_back else {}),
        **({"unit_tiles": list(per_unit), "tile_shape": list(ts)} if unit_ts else {}),
        **(extra_identity or {}),
    }
    # sequential_labels and the output location do not change what is staged, so they
    # are not part of the key: a resumed run may change them.
    return RunPlan(
        grid=grid,
        channel_axis=src.channel_axis,
        merge=merge,
        connectivity=int(connectivity),
        iou_threshold=float(iou_threshold),
        skip_empty=bool(skip_empty),
        empty_threshold=None if empty_threshold is None else float(empty_threshold),
        sequential=bool(sequential_labels),
        retries=int(retries),
        retry_delay=float(retry_delay),
        run_key=_run_key(desc),
        read_back=bool(read_back),
        unit_tile_shape=unit_ts,
        description=desc,
    )

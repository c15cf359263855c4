"""The base class of the built-in segmenters and their shared option checks.

Every built-in segmenter is made by a *factory* function (the entry point registered
under ``blockbuster.segmenters``) that validates its options and returns a frozen
dataclass instance. The instance is a picklable callable ``seg(tile) -> labels`` with:

- ``memory_factor`` (class attribute): peak memory while segmenting a tile, the tile
  included, as a multiple of the input tile's bytes, measured with :mod:`tracemalloc` on
  ``uint16`` tiles (the common microscopy dtype), worst of 2D and 3D. The working memory
  is mostly per voxel, not per input byte, so for other dtypes use
  :meth:`SegmenterBase.peak_memory_bytes`, which models it for any shape and dtype;
- ``uses_gpu`` (class attribute, ``False`` for the built-ins);
- :meth:`SegmenterBase.cache_token`: a stable string naming what it computes (class,
  algorithm version, options), used for caching and resume.

Multi-channel tiles: set ``channel_axis`` to the tile axis holding channels; ``channel``
then picks one channel (an int) or reduces over channels (``"max"``, the default, or
``"mean"``). The output has the spatial shape only (the channel axis removed).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Sequence
from typing import Any, ClassVar, Literal, overload

import numpy as np
import scipy.ndimage as ndi

from blockbuster.errors import InvalidParameterError

__all__ = [
    "ChannelSpec",
    "SegmenterBase",
    "Sigma",
    "check_channel",
    "check_float",
    "check_int",
    "check_sigma",
    "otsu_threshold",
]

ChannelSpec = int | Literal["max", "mean"] | None
Sigma = float | tuple[float, ...]


# ---------------------------------------------------------------------------------------
# option validation helpers (shared with watershed.py)


def _fail(option: str, value: Any, fix: str) -> InvalidParameterError:
    return InvalidParameterError(f"{option}={value!r} is not valid: {fix}")


@overload
def check_int(
    option: str, value: Any, *, minimum: int | None = None, allow_none: Literal[False] = False
) -> int: ...
@overload
def check_int(
    option: str, value: Any, *, minimum: int | None = None, allow_none: bool
) -> int | None: ...
def check_int(
    option: str, value: Any, *, minimum: int | None = None, allow_none: bool = False
) -> int | None:
    """Validate an integer option (bools and non-integral numbers are refused)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _fail(option, value, "give an integer" + (" or None" if allow_none else ""))
    if minimum is not None and value < minimum:
        raise _fail(option, value, f"give an integer >= {minimum}")
    return int(value)


@overload
def check_float(
    option: str, value: Any, *, minimum: float | None = None, allow_none: Literal[False] = False
) -> float: ...
@overload
def check_float(
    option: str, value: Any, *, minimum: float | None = None, allow_none: bool
) -> float | None: ...
def check_float(
    option: str, value: Any, *, minimum: float | None = None, allow_none: bool = False
) -> float | None:
    """Validate a finite real option."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise _fail(option, value, "give a finite number" + (" or None" if allow_none else ""))
    if minimum is not None and value < minimum:
        raise _fail(option, value, f"give a number >= {minimum}")
    return float(value)


def check_sigma(option: str, value: Any) -> float | tuple[float, ...]:
    """A smoothing sigma: one number >= 0, or one number >= 0 per spatial axis."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise _fail(option, value, "give a number >= 0 or one per spatial axis")
        return tuple(check_float(option, v, minimum=0.0) for v in value)
    return check_float(option, value, minimum=0.0)


def check_channel(channel_axis: Any, channel: Any) -> tuple[int | None, int | str | None]:
    """Validate the ``channel_axis`` / ``channel`` pair."""
    channel_axis = check_int("channel_axis", channel_axis, allow_none=True)
    if channel is None:
        return channel_axis, None
    if channel_axis is None:
        raise _fail(
            "channel",
            channel,
            "a channel can only be chosen on a multi-channel tile: also set "
            "channel_axis to the tile axis holding the channels",
        )
    if isinstance(channel, str):
        if channel not in ("max", "mean"):
            raise _fail("channel", channel, "give a channel index, 'max' or 'mean'")
        return channel_axis, channel
    return channel_axis, check_int("channel", channel, minimum=0)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---------------------------------------------------------------------------------------

#: Integer images whose value range has at most this many values get skimage's exact
#: per-value Otsu; others (and floats) a 256-bin histogram, as skimage does for floats.
_EXACT_OTSU_RANGE = 1 << 16
_OTSU_FIXED_BYTES = 3 * 2**20  # the per-value histogram and its cumulative sums
_FIXED_BYTES = 2**18


def otsu_threshold(img: np.ndarray) -> float | None:
    """Otsu's threshold of an image, or None when it has fewer than two distinct values.

    Same value as :func:`skimage.filters.threshold_otsu`, but with bounded memory for
    any dtype: integer images spanning more than 65536 values (and float images) use a
    256-bin histogram computed without copying the image, instead of one bin per value.
    NaN voxels are ignored.

    Examples
    --------
    >>> import numpy as np
    >>> otsu_threshold(np.array([10, 11, 12, 200, 201, 202], dtype=np.uint16))
    12.0
    >>> otsu_threshold(np.array([3, 3, 3])) is None
    True
    >>> 0 < otsu_threshold(np.array([0, 1, 2**40, 2**40 + 1], dtype=np.int64)) < 2**40
    True
    """
    from skimage.filters import threshold_otsu

    if img.dtype.kind == "f":
        lo, hi = img.min(), img.max()  # NaN or inf when the tile has any
        if not (np.isfinite(lo) and np.isfinite(hi)):
            finite = img[np.isfinite(img)]
            if finite.size == 0:
                return None
            lo, hi = finite.min(), finite.max()
    else:
        lo, hi = img.min(), img.max()
    if not hi > lo:
        return None
    if img.dtype.kind in "iub" and int(hi) - int(lo) < _EXACT_OTSU_RANGE:
        return float(threshold_otsu(img))
    counts, edges = np.histogram(img.ravel(), bins=256, range=(float(lo), float(hi)))
    centers = (edges[:-1] + edges[1:]) / 2.0
    return float(threshold_otsu(hist=(counts, centers)))


@dataclasses.dataclass(frozen=True)
class SegmenterBase:
    """Base of the built-in segmenters: channel handling, cache token, memory model.

    Subclasses are frozen dataclasses whose fields are their options, and define
    ``VERSION`` (bump when the algorithm's output changes), ``memory_factor`` and
    :meth:`working_bytes_per_voxel` (measured working bytes per spatial voxel on top of
    the input).
    """

    VERSION: ClassVar[int] = 1
    memory_factor: ClassVar[float] = 1.0
    uses_gpu: ClassVar[bool] = False

    @classmethod
    def working_bytes_per_voxel(cls, ndim: int) -> float:
        """Peak temporary bytes per spatial voxel for ``ndim``-D tiles (beyond the input)."""
        return 0.0

    def __call__(self, tile: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def cache_token(self) -> str:
        """A stable string identifying what this segmenter computes.

        Class qualified name, algorithm version and options (JSON, keys sorted). Equal
        for equal segmenters, including across processes and pickling.

        Examples
        --------
        >>> from blockbuster.segmenters import threshold
        >>> threshold(min_size=5).cache_token()
        'blockbuster.segmenters.ThresholdSegmenter:v1:{"channel": null, "channel_axis": null, "connectivity": 1, "min_size": 5, "smooth_sigma": 0.0, "threshold": null}'
        """
        cls = type(self)
        options = {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return (
            f"{cls.__module__.split('._')[0]}.{cls.__qualname__}:v{cls.VERSION}:"
            f"{json.dumps(options, sort_keys=True)}"
        )

    def options(self) -> dict[str, Any]:
        """The options of this segmenter, as keyword arguments of its factory."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def with_channel_axis(self, channel_axis: int | None) -> SegmenterBase:
        """A copy that reads tiles whose channels lie along ``channel_axis``.

        For a pipeline that knows where the channel axis of its tiles is; a segmenter
        built with an explicit ``channel_axis`` is returned unchanged.
        """
        if self.channel_axis is not None or channel_axis is None:  # type: ignore[attr-defined]
            return self
        # channel_axis is a field of every subclass, not of this base
        return dataclasses.replace(self, channel_axis=channel_axis)  # type: ignore[call-arg]

    def peak_memory_bytes(self, tile_shape: Sequence[int], dtype: Any = np.uint16) -> int:
        """Estimated peak memory (bytes) of segmenting one tile, the tile itself included.

        Parameters
        ----------
        tile_shape : tuple of int
            Shape of the tile given to the segmenter (with its channel axis, if any).
        dtype : numpy dtype
            The tile's dtype.

        Examples
        --------
        >>> from blockbuster.segmenters import watershed
        >>> watershed().peak_memory_bytes((1024, 1024), "uint16") / 2**20  # MiB
        43.25
        """
        shape = tuple(int(s) for s in tile_shape)
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        ca = getattr(self, "channel_axis", None)
        spatial = [s for i, s in enumerate(shape) if ca is None or i != ca % len(shape)]
        per_voxel = self.working_bytes_per_voxel(len(spatial))
        if ca is not None:
            per_voxel += 4.0  # a reduced (float32 for "mean") single-channel copy
        fixed = _FIXED_BYTES
        if getattr(self, "threshold", None) is None:
            fixed += _OTSU_FIXED_BYTES
        return int(math.ceil(nbytes + per_voxel * math.prod(spatial) + fixed))

    # -- shared steps ------------------------------------------------------------------

    def _spatial(self, tile: np.ndarray) -> np.ndarray:
        """The tile's single-channel spatial image (channel selected or reduced)."""
        tile = np.asarray(tile)
        ca = getattr(self, "channel_axis", None)
        if ca is not None:
            if not -tile.ndim <= ca < tile.ndim:
                raise InvalidParameterError(
                    f"channel_axis={ca} is out of range for a tile of shape {tile.shape}; "
                    "give the index of the axis holding the channels"
                )
            ch = getattr(self, "channel", None)
            if isinstance(ch, int):
                if ch >= tile.shape[ca]:
                    raise InvalidParameterError(
                        f"channel={ch} but the tile has {tile.shape[ca]} channels along "
                        f"axis {ca} (shape {tile.shape}); choose 0..{tile.shape[ca] - 1}"
                    )
                tile = np.take(tile, ch, axis=ca)
            elif ch == "mean":
                tile = tile.mean(axis=ca, dtype=np.float32)
            else:
                tile = tile.max(axis=ca)
        if tile.ndim < 1 or tile.size == 0:
            raise InvalidParameterError(
                f"cannot segment a tile of shape {tile.shape}: it has no voxels"
            )
        if not (
            np.issubdtype(tile.dtype, np.integer)
            or np.issubdtype(tile.dtype, np.floating)
            or tile.dtype == bool
        ):
            raise InvalidParameterError(
                f"cannot segment a tile of dtype {tile.dtype}: give an integer, float or "
                "boolean image"
            )
        if tile.dtype == bool:
            tile = tile.view(np.uint8)
        return tile

    def _smoothed(self, img: np.ndarray, sigma: Sigma) -> np.ndarray:
        if isinstance(sigma, tuple):
            if len(sigma) != img.ndim:
                raise InvalidParameterError(
                    f"smooth_sigma={sigma!r} gives {len(sigma)} values but the tile has "
                    f"{img.ndim} spatial axes; give one number or one per spatial axis"
                )
            if not any(sigma):
                return img
        elif not sigma:
            return img
        out = np.empty(img.shape, dtype=np.float32)
        ndi.gaussian_filter(img, sigma, output=out, mode="nearest")
        return out

    def _foreground(self, img: np.ndarray, thr: float | None) -> np.ndarray | None:
        """Boolean foreground ``img > threshold`` (Otsu when None); None when all background.

        A constant tile has no Otsu threshold: it is all background (unless a given
        threshold is below its value). NaN voxels are background.
        """
        if thr is None:
            thr = otsu_threshold(img)
            if thr is None:
                return None
        fg = img > thr
        return fg

    @staticmethod
    def _remove_small(labels: np.ndarray, n: int, min_size: int) -> np.ndarray:
        """Drop objects smaller than ``min_size`` voxels and renumber 1..m (in place)."""
        if min_size <= 1 or n == 0:
            return labels
        counts = np.bincount(labels.ravel(), minlength=n + 1)
        keep = counts >= min_size
        keep[0] = False
        if keep[1:].all():
            return labels
        lut = np.zeros(n + 1, dtype=labels.dtype)
        lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=labels.dtype)
        return np.take(lut, labels, out=labels)

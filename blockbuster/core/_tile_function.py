"""The tile-function contract: what ``tile_process`` asks of ``fn``, as typing Protocols.

Every tile function is a :class:`TileFunction`: called with one tile (the halo and all
channels included), it returns integer labels with the tile's spatial shape. The rest
is optional, each part a Protocol of its own that a function may also satisfy:

- :class:`CacheTokened`: ``cache_token() -> str`` names what the function computes. It
  replaces the default identity (code, closure values, instance state: see
  :func:`~blockbuster.core.fn_identity`) and is how an object holding large state (a
  loaded model) is identified without hashing that state.
- :class:`ChannelAware`: ``with_channel_axis(axis)`` returns the function told where
  the channel axis is (the built-in segmenters).
- :class:`MemoryHinted`: ``memory_factor`` (and, for GPU use, :class:`GpuMemoryHinted`
  ``gpu_memory_factor``): working memory per input byte, used by ``tile_shape="auto"``.
- :class:`GpuModelSized`: ``gpu_model_bytes``, the GPU memory one loaded model takes
  whatever the tile (subtracted from free GPU memory before tiles are sized).
- :class:`PlaneByPlane`: ``plane_by_plane``, true when the function segments a 3D tile
  one plane at a time (its working memory follows one plane, not the volume).

Examples
--------
>>> class Seg:
...     def __call__(self, tile): return tile > 0
...     def cache_token(self): return "seg-v1"
>>> isinstance(Seg(), TileFunction), isinstance(Seg(), CacheTokened)
(True, True)
>>> isinstance(len, CacheTokened)
False
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "TileFunction",
    "CacheTokened",
    "ChannelAware",
    "MemoryHinted",
    "GpuMemoryHinted",
    "GpuModelSized",
    "PlaneByPlane",
    "cache_token_of",
]


@runtime_checkable
class TileFunction(Protocol):
    """``fn(tile) -> labels``: integer labels (0 = background), the tile's spatial shape."""

    def __call__(self, tile: Any, /) -> Any: ...


@runtime_checkable
class CacheTokened(Protocol):
    """A tile function that names what it computes (class, version, options, weights)."""

    def cache_token(self) -> str: ...


@runtime_checkable
class ChannelAware(Protocol):
    """A tile function that is told which axis of its tiles holds the channels."""

    def with_channel_axis(self, axis: int) -> Any: ...


@runtime_checkable
class MemoryHinted(Protocol):
    """A tile function that states its working memory per input byte."""

    memory_factor: float


@runtime_checkable
class GpuMemoryHinted(Protocol):
    """A tile function that states its GPU working memory per input byte."""

    gpu_memory_factor: float


@runtime_checkable
class GpuModelSized(Protocol):
    """A tile function that states the GPU memory its loaded model takes (bytes)."""

    gpu_model_bytes: int


@runtime_checkable
class PlaneByPlane(Protocol):
    """A tile function that states whether it works on a 3D tile one plane at a time."""

    plane_by_plane: bool


def cache_token_of(fn: Any) -> str | None:
    """``fn.cache_token()`` when ``fn`` (an instance, not a class) defines it, else None.

    >>> cache_token_of(len) is None
    True
    """
    if inspect.isclass(fn) or not isinstance(fn, CacheTokened):
        return None
    return str(fn.cache_token())

"""Turning what the user passed as ``image`` into something tiles can be read from.

Two kinds of source:

- *stored* (``kind == "stored"``): a zarr array / OME-Zarr image / TIFF on disk. Each
  worker process reopens it from its path and reads just the region of its tiles.
  Identified by path, metadata and a stamp of its chunk files (:mod:`blockbuster.io`'s
  ``tree_stamp``), so runs over it can be cached and resumed, and a chunk rewritten in
  place is seen.
- *dask* (``kind == "dask"``): a dask or NumPy array (or a zarr array in memory). The
  driver asks the cluster to compute each tile's region as the tile is scheduled.
  NumPy arrays are identified by a hash of their content (they are in memory, and small
  by nature next to a stored volume); dask arrays by their graph's token (their name).
  A zarr array in memory or in a non-local store has no identity (``ident["unknown"]``
  says why): runs over it are never resumed.

Examples
--------
>>> import numpy as np
>>> src = open_image(np.zeros((4, 5, 3)), channel_axis=-1)
>>> src.kind, src.spatial_shape, src.channel_axis
('dask', (4, 5), 2)
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

from blockbuster.core import array_token
from blockbuster.errors import InputError, InvalidParameterError, ParameterTypeError

from ._array_source import describe
from ._readers import open_path

__all__ = ["ImageSource", "open_image", "full_slices"]


def full_slices(spatial: tuple[slice, ...], channel_axis: int | None) -> tuple[slice, ...]:
    """Insert the whole channel axis into a tuple of spatial slices."""
    if channel_axis is None:
        return tuple(spatial)
    s = list(spatial)
    s.insert(channel_axis, slice(None))
    return tuple(s)


@dataclass
class ImageSource:
    """An image to be tiled (see the module docstring)."""

    kind: str
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...] | None
    channel_axis: int | None
    description: str
    ident: dict[str, Any]
    resumable: bool
    reader: Any = None  # stored: picklable object with .read(slices, out=None)
    dask_array: Any = None  # dask: the array
    meta: dict[str, Any] = field(default_factory=dict)  # axes, scale, ngff info

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(s for i, s in enumerate(self.shape) if i != self.channel_axis)

    @property
    def spatial_chunks(self) -> tuple[int, ...] | None:
        if self.chunks is None:
            return None
        return tuple(c for i, c in enumerate(self.chunks) if i != self.channel_axis)

    def identity(self) -> dict[str, Any]:
        return dict(self.ident)

    def read(self, spatial: tuple[slice, ...]) -> np.ndarray:
        """Read a spatial region (all channels) in the current process."""
        sl = full_slices(spatial, self.channel_axis)
        if self.kind == "stored":
            return np.asarray(self.reader.read(sl))
        return np.asarray(self.dask_array[sl].compute(scheduler="sync"))


def _normalize_channel_axis(channel_axis: Any, ndim: int) -> int | None:
    if channel_axis is None:
        return None
    try:
        ax = int(channel_axis)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"channel_axis={channel_axis!r} is not an axis number; pass an int or None"
        ) from None
    if not -ndim <= ax < ndim:
        raise InvalidParameterError(
            f"channel_axis={channel_axis} is out of range for an image with {ndim} axes; "
            f"use a value in [{-ndim}, {ndim - 1}] or None"
        )
    return ax % ndim


def _from_stored(
    reader: Any,
    arr_like: Any,
    path: str,
    channel_axis: Any,
    extra_ident: dict[str, Any] | None = None,
    description: str | None = None,
    meta: dict[str, Any] | None = None,
) -> ImageSource:
    shape = tuple(int(s) for s in arr_like.shape)
    ca = _normalize_channel_axis(channel_axis, len(shape))
    chunks = tuple(int(c) for c in getattr(arr_like, "chunks", shape))
    if extra_ident is not None:
        ident = {"kind": "stored", **extra_ident}
    else:
        from ._stamp import stamp_mode, tree_stamp

        ident = {
            "kind": "stored",
            "path": os.path.realpath(path),
            "shape": list(shape),
            "dtype": str(np.dtype(arr_like.dtype)),
            "chunks": list(chunks),
            "pixels": tree_stamp(path) if stamp_mode() == "chunks" else None,
        }
    return ImageSource(
        "stored",
        shape,
        np.dtype(arr_like.dtype),
        chunks,
        ca,
        description or f"zarr array {path} {shape} {np.dtype(arr_like.dtype)}",
        ident,
        True,
        reader=reader,
        meta=meta or {},
    )


def _local_store_path(arr: zarr.Array) -> str | None:
    store = arr.store
    root = getattr(store, "root", None)
    if root is None or type(store).__name__ != "LocalStore":
        return None
    return os.path.join(os.fspath(root), arr.path) if arr.path else os.fspath(root)


def open_image(
    image: Any,
    *,
    channel_axis: int | None = None,
    level: int = 0,
    component: str | None = None,
    param: str = "image",
) -> ImageSource:
    """Open ``image`` (path, zarr array, dask array or NumPy array) as an :class:`ImageSource`.

    Raises
    ------
    InputError
        The path does not exist or is not a readable image.
    InvalidParameterError
        ``channel_axis`` does not fit the image.
    """
    if isinstance(image, (str, os.PathLike)):
        return _open_path(
            os.fspath(image),
            channel_axis=channel_axis,
            level=level,
            component=component,
            param=param,
        )
    if isinstance(image, zarr.Array):
        path = _local_store_path(image)
        if path is not None:  # reopened by path in each process
            return _open_path(path, channel_axis=channel_axis, level=0, component=None)
        import dask.array as da

        return _from_dask(
            da.from_zarr(image),
            channel_axis,
            name_ok=False,
            unknown=f"a zarr array in a {type(image.store).__name__} (not a local directory) "
            "has no stamp of its chunks",
        )
    import dask.array as da

    if isinstance(image, da.Array):
        return _from_dask(image, channel_axis, name_ok=True)
    if isinstance(image, np.ndarray) or hasattr(image, "__array__"):
        import dask.array as da

        arr = np.asarray(image)
        if arr.ndim < 1:
            raise InputError("image is a scalar; pass a 2D or 3D array (plus a channel axis)")
        return _from_dask(
            da.from_array(arr, chunks=arr.shape, name=False),
            channel_axis,
            name_ok=True,
            what="NumPy array",
            token=array_token(arr),
        )
    raise ParameterTypeError(
        f"{param} of type {type(image).__name__} is not supported; pass a path to a zarr "
        "array, OME-Zarr image or TIFF, a zarr.Array, a dask array or a NumPy array"
    )


def _from_dask(
    arr: Any,
    channel_axis: Any,
    name_ok: bool,
    what: str = "dask array",
    token: str | None = None,
    unknown: str | None = None,
) -> ImageSource:
    shape = tuple(int(s) for s in arr.shape)
    if any(np.isnan(s) for s in arr.shape):
        raise InputError(
            "the dask array has unknown chunk sizes; call arr.compute_chunk_sizes() first"
        )
    ca = _normalize_channel_axis(channel_axis, len(shape))
    chunks = tuple(int(c[0]) for c in arr.chunks)
    ident: dict[str, Any] = {
        "kind": "dask" if token is None else "numpy",
        "name": token or (arr.name if name_ok else f"unnamed-{uuid.uuid4().hex}"),
        "shape": list(shape),
        "dtype": str(arr.dtype),
    }
    if not name_ok:
        ident["unknown"] = unknown or f"the {what} has no stable identity"
    return ImageSource(
        "dask",
        shape,
        np.dtype(arr.dtype),
        chunks,
        ca,
        f"in-memory {what} {shape} {arr.dtype}",
        ident,
        name_ok,
        dask_array=arr,
    )


def _open_path(
    path: str,
    *,
    channel_axis: Any,
    level: int,
    component: str | None,
    param: str = "image",
) -> ImageSource:
    """A stored image (zarr v2/v3, OME-Zarr, TIFF) through :func:`open_path`."""
    src = open_path(path, level=level, component=component, param=param)
    ca = channel_axis if channel_axis is not None else getattr(src, "channel_axis", None)
    meta = {
        "axes": getattr(src, "axes", None),
        "scale": getattr(src, "scale", None),
        "levels": getattr(src, "levels", None),
        "format": getattr(src, "kind", None),
    }
    return _from_stored(
        src, src, path, ca, extra_ident=src.identity(), description=describe(src), meta=meta
    )

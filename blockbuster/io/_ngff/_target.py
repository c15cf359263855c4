"""Writing label images into OME-Zarr images, so that napari and ome-zarr-py open them.

When the output path points inside an OME-Zarr image as ``<image.zarr>/labels/<name>``,
:func:`label_target` returns a :class:`LabelTarget` and the labels are written as an
OME-Zarr *label image* of that image:

``<image.zarr>/labels/<name>/0``
    full-resolution labels (the image's spatial shape, no channel axis), written by the
    pipeline chunk by chunk (one writer per chunk) into the array made by
    :meth:`LabelTarget.create_level0`;
``<image.zarr>/labels/<name>/1 ... n-1``
    a pyramid with the same number of levels and the same shapes as the image's own
    pyramid, built by :meth:`LabelTarget.finish` from the level below, block by block;
``<image.zarr>/labels/<name>`` metadata
    ``multiscales`` (axes and coordinate transformations of the image minus its channel
    axis) and ``image-label`` (``source: {"image": "../../"}``, optional ``colors`` and
    ``properties``);
``<image.zarr>/labels`` metadata
    the ``labels`` list, to which ``<name>`` is appended (once).

The layout follows the image: NGFF 0.4 in ``.zattrs`` of zarr v2 groups, or NGFF 0.5 in the
``ome`` attribute of zarr v3 groups.  Metadata is written last, after all pixels, so a
reader never sees a label image that is still being written.

Downsampling is nearest-neighbour by striding: level ``i`` takes every ``k``-th voxel of
level ``i-1`` along each axis (``k`` the image's factor, usually 2).  Labels cannot be
averaged; striding keeps every value an existing label id, places each coarse voxel on
the same grid as the image's coarse levels, and costs one streaming pass over the level
below.  A block-mode filter would make marginally smoother coarse previews for several
times the CPU, and coarse levels are only for viewing.

Examples
--------
>>> import tempfile, os, numpy as np, zarr
>>> d = tempfile.mkdtemp(); img = os.path.join(d, "img.zarr")
>>> g = zarr.open_group(img, mode="w", zarr_format=3)
>>> for i, s in enumerate([(2, 32, 48), (2, 16, 24)]):
...     _ = g.create_array(str(i), shape=s, chunks=(1, 16, 16), dtype="u2")
>>> g.attrs["ome"] = {"version": "0.5", "multiscales": [{
...     "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"},
...              {"name": "x", "type": "space"}],
...     "datasets": [{"path": str(i), "coordinateTransformations": [
...         {"type": "scale", "scale": [1.0, 2.0 ** i, 2.0 ** i]}]} for i in range(2)]}]}
>>> t = label_target(os.path.join(img, "labels", "cells"))
>>> t.ngff_version, t.spatial_shape, t.level_shapes
('0.5', (32, 48), [(32, 48), (16, 24)])
>>> z = t.create_level0(t.spatial_shape, "uint32", (16, 16))
>>> z[:16, :16] = 1; z[16:, 16:] = 7
>>> t.finish(colors={7: (255, 0, 0)})
>>> zarr.open_array(os.path.join(img, "labels", "cells", "1"))[::8, ::8].tolist()
[[1, 0, 0], [0, 7, 7]]
>>> zarr.open_group(os.path.join(img, "labels")).attrs["ome"]["labels"]
['cells']
>>> label_target(os.path.join(d, "plain.zarr")) is None
True
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from blockbuster.errors import InputError, InvalidParameterError

if TYPE_CHECKING:
    import zarr

from .._metadata import _group_attrs, _node_type, channel_axis_of, ngff_metadata, normalize_axes
from .._places import local_store, member_path, parse_location
from .._stores import is_url

# Metadata and pyramid building live in their own modules (one job each) as mixins of
# LabelTarget, which stays here so its pickled identity is unchanged; every name
# importable from here before the split still is.
from ._meta import (
    _array_shape,
    _drop,
    _drop_axis_transforms,
    _MetadataMixin,
    _rgba,
)
from ._pyramid import _PyramidMixin

__all__ = ["LabelTarget", "label_target", "LABEL_DTYPES"]

#: Integer types NGFF allows for label images.
LABEL_DTYPES = tuple(
    np.dtype(t) for t in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64")
)
AccessMode = Literal["r", "r+", "a", "w", "w-"]
_VERSION_FORMAT: dict[str, Literal[2, 3]] = {"0.4": 2, "0.5": 3}


def _default_compressors(zarr_format: int) -> Any:
    """Blosc(zstd, shuffle): readable by zarr-python 2/3, zarr.js, Fiji and neuroglancer."""
    if zarr_format == 2:
        from numcodecs import Blosc

        return Blosc(cname="zstd", clevel=3, shuffle=Blosc.SHUFFLE)
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


def label_target(write_to: str | os.PathLike) -> LabelTarget | None:
    """A :class:`LabelTarget` when ``write_to`` is ``<OME-Zarr image>/labels/<name>``.

    Parameters
    ----------
    write_to : str or os.PathLike
        The output path the user asked for.

    Returns
    -------
    LabelTarget or None
        ``None`` when ``write_to`` is not of the form ``<image>/labels/<name>`` or when
        ``<image>`` is not an existing OME-Zarr image group (``multiscales`` metadata):
        the caller then writes a plain zarr array at ``write_to``.

    Raises
    ------
    InvalidParameterError
        ``write_to`` is inside an OME-Zarr image of a version other than 0.4/0.5, or the
        ``labels`` path in the image is not a group.

    Examples
    --------
    >>> import tempfile, os
    >>> label_target(os.path.join(tempfile.mkdtemp(), "x.zarr", "labels", "a")) is None
    True
    """
    raw = os.fspath(write_to)
    p = os.fspath(parse_location(raw, param="write_to")).rstrip(os.sep)
    name = os.path.basename(p)
    labels_dir = os.path.dirname(p)
    if os.path.basename(labels_dir) != "labels" or not name or name.startswith("."):
        return None
    image = (
        os.path.dirname(labels_dir) if is_url(p) else os.path.realpath(os.path.dirname(labels_dir))
    )
    kind, fmt = _node_type(image)
    if kind != "group":
        return None
    ome, version = ngff_metadata(_group_attrs(image, fmt))
    if not ome or not ome.get("multiscales"):
        return None
    if version not in _VERSION_FORMAT or _VERSION_FORMAT[version] != fmt:
        raise InvalidParameterError(
            f"write_to={raw!r} is inside an OME-Zarr {version or '(unversioned)'} image "
            f"(zarr v{fmt}); labels can be written into NGFF 0.4 (zarr v2) or 0.5 (zarr v3) "
            "images only: write to a plain zarr path instead"
        )
    lk, _ = _node_type(os.path.join(image, "labels"))
    if lk == "array":
        raise InvalidParameterError(
            f"write_to={raw!r}: {os.path.join(image, 'labels')!r} is an array, not a labels "
            "group; choose another output path"
        )
    ms = ome["multiscales"][0]
    datasets = list(ms.get("datasets") or [])
    found = []
    for d in datasets:
        arr_dir = member_path(image, str(d.get("path", "")).strip("/"), what="dataset path")
        found.append(_array_shape(arr_dir))
    shapes = [s for s in found if s is not None]
    if not shapes or len(shapes) < len(found):
        raise InputError(
            f"OME-Zarr image {image!r}: a dataset listed in its multiscales "
            "metadata is missing; cannot write labels into it"
        )
    axes = normalize_axes(ms.get("axes"), len(shapes[0]))
    if axes is None or len(axes) != len(shapes[0]):
        raise InputError(f"OME-Zarr image {image!r} has no usable axes metadata")
    return LabelTarget(
        image_path=image,
        name=name,
        ngff_version=version,
        image_axes=axes,
        channel_axis=channel_axis_of(axes),
        image_level_shapes=[tuple(s) for s in shapes],
        image_datasets=datasets,
        image_transforms=list(ms.get("coordinateTransformations") or []),
    )


@dataclass(frozen=True)
class LabelTarget(_PyramidMixin, _MetadataMixin):
    """Where and how to write a label image into an OME-Zarr image (picklable).

    Built by :func:`label_target`.  Lifecycle: :meth:`create_level0` (once, in the
    driver), the level-0 chunks written by any number of processes (open
    :attr:`level0_path` with ``zarr.open_array(path, mode="r+")``; one writer per chunk),
    then :meth:`finish` (once, in the driver) for the pyramid and the metadata.

    Attributes
    ----------
    image_path : str
        Resolved path of the OME-Zarr image group.
    name : str
        Name of the label image under ``<image>/labels``.
    ngff_version : str
        ``"0.4"`` (zarr v2) or ``"0.5"`` (zarr v3), as the image.
    image_axes : list of dict
        The image's NGFF axes.
    channel_axis : int or None
        The image's channel axis, absent from the labels.
    image_level_shapes : list of tuple of int
        Shapes of the image's levels.
    image_datasets : list of dict
        The image's ``multiscales[0].datasets``.
    image_transforms : list of dict
        The image's multiscale-wide ``coordinateTransformations`` (often empty).
    """

    image_path: str
    name: str
    ngff_version: str
    image_axes: list[dict]
    channel_axis: int | None
    image_level_shapes: list[tuple[int, ...]]
    image_datasets: list[dict] = field(default_factory=list)
    image_transforms: list[dict] = field(default_factory=list)

    # -- layout ------------------------------------------------------------------------
    @property
    def zarr_format(self) -> Literal[2, 3]:
        """2 for NGFF 0.4, 3 for NGFF 0.5."""
        return _VERSION_FORMAT[self.ngff_version]

    @property
    def labels_path(self) -> str:
        """``<image>/labels``."""
        return os.path.join(self.image_path, "labels")

    @property
    def group_path(self) -> str:
        """``<image>/labels/<name>``: the label image group."""
        return os.path.join(self.labels_path, self.name)

    @property
    def n_levels(self) -> int:
        """Number of pyramid levels (that of the image)."""
        return len(self.image_level_shapes)

    def level_path(self, level: int) -> str:
        """Path of the array of ``level`` (``<image>/labels/<name>/<level>``)."""
        return os.path.join(self.group_path, str(level))

    @property
    def level0_path(self) -> str:
        """Path of the full-resolution label array, ``<image>/labels/<name>/0``."""
        return self.level_path(0)

    @property
    def level_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the label levels: the image's level shapes without the channel axis."""
        return [tuple(_drop(list(s), self.channel_axis)) for s in self.image_level_shapes]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape of level 0: the image's level-0 shape without the channel axis."""
        return self.level_shapes[0]

    @property
    def axes(self) -> list[dict]:
        """NGFF axes of the labels: the image's axes minus the channel axis."""
        return _drop([dict(a) for a in self.image_axes], self.channel_axis)

    def level_transforms(self, level: int) -> list[dict]:
        """``coordinateTransformations`` of a label level: the image's, minus the channel.

        A dataset without transforms (invalid, but seen) gets a ``scale`` equal to the
        downsampling factor from level 0.
        """
        ds = self.image_datasets[level] if level < len(self.image_datasets) else {}
        tr = ds.get("coordinateTransformations")
        if tr:
            return _drop_axis_transforms(tr, self.channel_axis)
        s0, s = self.level_shapes[0], self.level_shapes[level]
        return [{"type": "scale", "scale": [float(a) / float(b) for a, b in zip(s0, s)]}]

    # -- writing -----------------------------------------------------------------------
    def _open_group(self, path: str, mode: AccessMode = "a") -> zarr.Group:
        import zarr

        return zarr.open_group(
            store=local_store(path, read_only=mode == "r"),
            mode=mode,
            zarr_format=self.zarr_format,
            use_consolidated=False,
        )

    def _array_kwargs(
        self, shape: Sequence[int], dtype: Any, chunks: Sequence[int], compressors: Any
    ) -> dict[str, Any]:
        kw: dict[str, Any] = dict(
            shape=tuple(int(s) for s in shape),
            dtype=dtype,
            chunks=tuple(max(1, min(int(c), int(s))) for c, s in zip(chunks, shape)),
            fill_value=0,
            overwrite=True,
            compressors=(
                _default_compressors(self.zarr_format) if compressors is None else compressors
            ),
        )
        if self.zarr_format == 2:
            kw["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
        else:
            kw["dimension_names"] = [str(a["name"]) for a in self.axes]
        return kw

    def create_level0(
        self,
        shape: tuple[int, ...],
        dtype: Any,
        chunks: tuple[int, ...],
        *,
        overwrite: bool = True,
        compressors: Any = None,
    ) -> zarr.Array:
        """Create the groups and the empty full-resolution label array.

        Creates ``<image>/labels`` (if needed) and ``<image>/labels/<name>`` without any
        OME metadata (that comes with :meth:`finish`), and takes ``<name>`` out of the
        ``labels`` list while it is being written.

        Parameters
        ----------
        shape : tuple of int
            Must equal :attr:`spatial_shape`.
        dtype : dtype-like
            An NGFF label type: (u)int8, (u)int16, (u)int32 or (u)int64.
        chunks : tuple of int
            Chunk shape (clipped to ``shape``); the pipeline writes one chunk per writer.
        overwrite : bool, default True
            Replace an existing label image of this name.  With ``False`` an existing
            level-0 array of the same shape, dtype and chunks is reused as it is (to resume
            a run); a different one is an error.
        compressors : optional
            Zarr compressors; Blosc(zstd, shuffle) by default.

        Returns
        -------
        zarr.Array
            The level-0 array, open for writing; unwritten chunks read as 0 (background).

        Raises
        ------
        InvalidParameterError
            Wrong shape, dtype or chunk rank, or an incompatible existing array with
            ``overwrite=False``.
        """
        import zarr

        shape = tuple(int(s) for s in shape)
        if shape != self.spatial_shape:
            raise InvalidParameterError(
                f"labels written into the OME-Zarr image {self.image_path!r} must have the "
                f"image's level-0 spatial shape {self.spatial_shape}, got shape {shape}; "
                "process level 0 of the image or write to a plain zarr path"
            )
        dt = np.dtype(dtype)
        if dt not in LABEL_DTYPES:
            raise InvalidParameterError(
                f"dtype={dt} cannot hold NGFF labels; use one of "
                f"{', '.join(str(t) for t in LABEL_DTYPES)}"
            )
        chunks = tuple(int(c) for c in chunks)
        if len(chunks) != len(shape) or any(c < 1 for c in chunks):
            raise InvalidParameterError(
                f"chunks={chunks} must give one positive size per axis of shape {shape}"
            )
        kw = self._array_kwargs(shape, dt, chunks, compressors)
        if not overwrite:
            kind, _ = _node_type(self.level0_path)
            if kind == "array":
                arr = zarr.open_array(store=local_store(self.level0_path), mode="r+")
                if (tuple(arr.shape), np.dtype(arr.dtype), tuple(arr.chunks)) == (
                    shape,
                    dt,
                    kw["chunks"],
                ):
                    return arr
                raise InvalidParameterError(
                    f"{self.level0_path!r} exists with shape {arr.shape}, dtype {arr.dtype}, "
                    f"chunks {arr.chunks}, not {shape}, {dt}, {kw['chunks']}; pass "
                    "overwrite=True to replace it"
                )
        labels = self._ensure_labels_group()
        self._set_labels_list(labels, remove=self.name)
        group = self._open_group(self.group_path, mode="w")  # clears an old label image
        return group.create_array("0", **kw)

    def _ensure_labels_group(self) -> zarr.Group:
        kind, fmt = _node_type(self.labels_path)
        if kind == "group" and fmt == self.zarr_format:
            return self._open_group(self.labels_path, mode="r+")
        if kind is not None:
            raise InvalidParameterError(
                f"{self.labels_path!r} exists but is not a zarr v{self.zarr_format} group; "
                "choose another output path"
            )
        group = self._open_group(self.labels_path, mode="a")
        self._write_ome(group, {})
        return group

    # -- pyramid (ngff_pyramid._PyramidMixin), metadata (ngff_meta._MetadataMixin) ----
    def finish(
        self,
        colors: Mapping[int, Iterable] | None = None,
        properties: Mapping[int, Mapping[str, Any]] | None = None,
        *,
        build_pyramid: bool = True,
        executor: Any = None,
        max_block_bytes: int = 64 << 20,
    ) -> None:
        """Build the pyramid, then write the metadata that makes it an OME-Zarr label image.

        Parameters
        ----------
        colors : dict of int to (r, g, b) or (r, g, b, a), optional
            Display colours of some label values, 0..255 integers (alpha 255 by default).
        properties : dict of int to dict, optional
            Arbitrary properties per label value (keep both small: they are JSON).
            ome-zarr-models requires the same label values in ``colors`` and
            ``properties`` when both are given.
        build_pyramid : bool, default True
            ``False`` when the caller has already built levels 1..n-1 (e.g. by mapping
            :meth:`downsample_block` over :meth:`level_blocks` on a cluster).
        executor, max_block_bytes
            See :meth:`build_pyramid`.

        Raises
        ------
        InvalidParameterError
            Level 0 does not exist, or a colour is not 3 or 4 integers in 0..255.
        """
        if colors:
            for k, v in colors.items():
                _rgba(v, k)
        if build_pyramid:
            self.build_pyramid(executor=executor, max_block_bytes=max_block_bytes)
        else:
            for lv in range(self.n_levels):
                if _node_type(self.level_path(lv))[0] != "array":
                    raise InvalidParameterError(
                        f"build_pyramid=False but {self.level_path(lv)!r} does not exist"
                    )
        group = self._open_group(self.group_path, mode="r+")
        self._write_ome(
            group,
            {
                "multiscales": self.multiscales(),
                "image-label": self.image_label(colors, properties),
            },
        )
        self._set_labels_list(self._ensure_labels_group(), add=self.name)

"""NGFF metadata of label images: the ``multiscales`` and ``image-label`` entries, the
``labels`` list, and the axis/transform bookkeeping that drops the image's channel axis.

:class:`_MetadataMixin` holds the metadata methods of
:class:`~blockbuster.io.LabelTarget`.

Examples
--------
>>> _drop_axis_transforms([{"type": "scale", "scale": [1.0, 0.5, 0.5]}], 0)
[{'type': 'scale', 'scale': [0.5, 0.5]}]
>>> _rgba((255, 0, 0), 7)
[255, 0, 0, 255]
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from blockbuster.errors import InvalidParameterError

from .._metadata import _read_json

__all__: list[str] = []

_DOWNSAMPLING = {
    "type": "nearest",
    "metadata": {
        "method": "blockbuster.io: nearest neighbour by striding",
        "description": "level i takes every k-th voxel of level i-1 (k = the "
        "image's downsampling factor per axis)",
    },
}


def _array_shape(d: str) -> tuple[int, ...] | None:
    meta = _read_json(os.path.join(d, "zarr.json"))
    if meta and meta.get("node_type") == "array":
        return tuple(int(s) for s in meta["shape"])
    meta = _read_json(os.path.join(d, ".zarray"))
    if meta and "shape" in meta:
        return tuple(int(s) for s in meta["shape"])
    return None


def _drop(seq: list, index: int | None) -> list:
    return [v for i, v in enumerate(seq) if i != index]


def _drop_axis_transforms(transforms: Iterable[dict], index: int | None) -> list[dict]:
    out = []
    for t in transforms or []:
        t = dict(t)
        for key in ("scale", "translation"):
            if isinstance(t.get(key), list):
                t[key] = _drop(t[key], index)
        out.append(t)
    return out


def _rgba(v: Iterable, label: Any) -> list[int]:
    try:
        vals = [int(c) for c in v]
        ok = (
            len(vals) in (3, 4)
            and all(0 <= c <= 255 for c in vals)
            and all(float(c) == int(c) for c in v)
        )
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InvalidParameterError(
            f"colors[{label!r}]={v!r} is not an (r, g, b) or (r, g, b, a) tuple of "
            "integers in 0..255"
        )
    return vals + [255] * (4 - len(vals))


class _MetadataMixin:
    """Metadata methods of :class:`~blockbuster.io.LabelTarget` (which defines
    the fields, :attr:`zarr_format`, :attr:`axes` and :meth:`level_transforms`)."""

    if TYPE_CHECKING:  # defined by LabelTarget
        name: str
        ngff_version: str
        channel_axis: int | None
        image_transforms: list[dict[str, Any]]

        @property
        def zarr_format(self) -> int: ...
        @property
        def axes(self) -> list[dict[str, Any]]: ...
        @property
        def n_levels(self) -> int: ...
        def level_transforms(self, level: int) -> list[dict[str, Any]]: ...

    __slots__ = ()

    def _ome_attrs(self, group: Any) -> dict[str, Any]:
        attrs = group.attrs.asdict()
        if self.zarr_format == 3:
            return dict(attrs.get("ome") or {})
        return dict(attrs)

    def _write_ome(self, group: Any, updates: Mapping[str, Any]) -> None:
        """Merge ``updates`` into the group's OME metadata (``ome`` namespace for 0.5)."""
        if self.zarr_format == 3:
            ome = self._ome_attrs(group)
            ome.update(updates)
            ome["version"] = self.ngff_version
            group.attrs["ome"] = ome
        else:
            group.attrs.update(dict(updates))

    def _set_labels_list(
        self, labels_group: Any, *, add: str | None = None, remove: str | None = None
    ) -> None:
        current = list(self._ome_attrs(labels_group).get("labels") or [])
        new = [n for n in current if n != remove]
        if add is not None and add not in new:
            new.append(add)
        if new != current or "labels" not in self._ome_attrs(labels_group):
            self._write_ome(labels_group, {"labels": new})

    def multiscales(self) -> list[dict]:
        """The label image's ``multiscales`` metadata."""
        ms: dict[str, Any] = {
            "name": self.name,
            "axes": self.axes,
            "datasets": [
                {"path": str(lv), "coordinateTransformations": self.level_transforms(lv)}
                for lv in range(self.n_levels)
            ],
            **_DOWNSAMPLING,
        }
        if self.image_transforms:
            ms["coordinateTransformations"] = _drop_axis_transforms(
                self.image_transforms, self.channel_axis
            )
        if self.ngff_version == "0.4":
            ms["version"] = "0.4"
        return [ms]

    def image_label(
        self,
        colors: Mapping[int, Iterable] | None = None,
        properties: Mapping[int, Mapping[str, Any]] | None = None,
    ) -> dict:
        """The ``image-label`` metadata (``source`` is ``../../``: the image group)."""
        il: dict[str, Any] = {"version": self.ngff_version, "source": {"image": "../../"}}
        if colors:
            il["colors"] = [
                {"label-value": int(k), "rgba": _rgba(v, k)} for k, v in sorted(colors.items())
            ]
        if properties:
            il["properties"] = [
                {"label-value": int(k), **dict(v)} for k, v in sorted(properties.items())
            ]
        return il

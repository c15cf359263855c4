"""Image metadata read from disk: zarr nodes and attributes, OME-NGFF multiscales and axes.

Helpers of :func:`~blockbuster.io.open_path`: what a zarr directory is (array or
group, v2 or v3), its OME-NGFF metadata and version, axes and the channel axis, scale
transforms (NGFF and OME-TIFF), dimension names, shards, and the modification stamp that
identifies a store. Metadata files only, never pixels. Re-exported by
:mod:`blockbuster.io`.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from blockbuster.errors import InvalidParameterError

from ._stores import head, is_url, read_bytes

__all__ = ["ngff_metadata", "normalize_axes", "channel_axis_of"]


_ZARR_META = ("zarr.json", ".zarray", ".zgroup", ".zattrs")
_KNOWN_AXIS_TYPES = {"x": "space", "y": "space", "z": "space", "c": "channel", "t": "time"}


def _join(root: str, sub: str | None) -> str:
    return os.path.join(root, *sub.strip("/").split("/")) if sub and sub.strip("/") else root


def _check_level(level: Any, levels: list, path: str) -> int:
    n = len(levels)
    try:
        lv = int(level)
        if lv != level:
            raise ValueError
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"level={level!r} is not an integer; available levels of {path!r}: 0..{n - 1}"
        ) from None
    if not -n <= lv < n:
        shapes = ", ".join(f"{i}: {tuple(s)}" for i, s in enumerate(levels))
        raise InvalidParameterError(
            f"level={level} is out of range for {path!r}; available levels: {shapes}"
        )
    return lv % n


def _read_json(p: str) -> dict | None:
    try:
        if is_url(p):
            data = read_bytes(p)
            return None if data is None else json.loads(data or b"{}")
        with open(p, "rb") as f:
            return json.loads(f.read() or b"{}")
    except (OSError, ValueError):
        return None


def _exists(p: str) -> bool:
    """A file (or, at a URL, an object) exists at ``p``."""
    return head(p) is not None if is_url(p) else os.path.exists(p)


def _node_type(d: str) -> tuple[str | None, int | None]:
    """('array' | 'group' | None, zarr_format) of a local directory (or a URL prefix),
    from its metadata."""
    meta = _read_json(os.path.join(d, "zarr.json"))
    if meta is not None and meta.get("zarr_format") == 3:
        return meta.get("node_type"), 3
    if _exists(os.path.join(d, ".zarray")):
        return "array", 2
    if _exists(os.path.join(d, ".zgroup")) or _exists(os.path.join(d, ".zattrs")):
        return "group", 2
    return None, None


def _group_attrs(d: str, zarr_format: int | None) -> dict:
    """User attributes of a group, read straight from its metadata file (no consolidation)."""
    if zarr_format == 3:
        return dict((_read_json(os.path.join(d, "zarr.json")) or {}).get("attributes") or {})
    return dict(_read_json(os.path.join(d, ".zattrs")) or {})


def ngff_metadata(attrs: dict) -> tuple[dict | None, str | None]:
    """The OME-NGFF metadata dict (``ome`` namespace for 0.5) and its version, or (None, None).

    Examples
    --------
    >>> ngff_metadata({"ome": {"version": "0.5", "multiscales": [{}]}})[1]
    '0.5'
    >>> ngff_metadata({"multiscales": [{"version": "0.4"}]})[1]
    '0.4'
    >>> ngff_metadata({"foo": 1})
    (None, None)
    """
    ome = attrs.get("ome")
    if isinstance(ome, dict):
        version = ome.get("version")
        if version is None and ome.get("multiscales"):
            version = ome["multiscales"][0].get("version")
        return ome, (str(version) if version is not None else None)
    if any(
        k in attrs
        for k in ("multiscales", "plate", "well", "bioformats2raw.layout", "labels", "image-label")
    ):
        version = None
        for key in ("multiscales", "plate", "well"):
            obj = attrs.get(key)
            if isinstance(obj, list) and obj:
                obj = obj[0]
            if isinstance(obj, dict) and obj.get("version") is not None:
                version = str(obj["version"])
                break
        return attrs, version
    return None, None


def normalize_axes(axes: Any, ndim: int) -> list[dict] | None:
    """NGFF axes as a list of dicts (0.3 string axes and 0.1/0.2 implicit tczyx upgraded)."""
    if axes is None:
        if ndim == 5:
            axes = list("tczyx")
        else:
            return None
    out = []
    for a in axes:
        if isinstance(a, str):
            d = {"name": a}
            if a in _KNOWN_AXIS_TYPES:
                d["type"] = _KNOWN_AXIS_TYPES[a]
            out.append(d)
        else:
            out.append(dict(a))
    return out


def channel_axis_of(axes: list[dict] | None) -> int | None:
    """Index of the axis of type ``"channel"`` (or untyped and named ``c``/``channel``)."""
    if not axes:
        return None
    for i, a in enumerate(axes):
        if a.get("type") == "channel":
            return i
    for i, a in enumerate(axes):
        if a.get("type") is None and str(a.get("name", "")).lower() in ("c", "channel"):
            return i
    return None


def _scale_of(transforms: Any, ndim: int) -> list[float] | None:
    if not transforms:
        return None
    for t in transforms:
        if isinstance(t, dict) and t.get("type") == "scale" and "scale" in t:
            s = [float(v) for v in t["scale"]]
            return s if len(s) == ndim else None
    return None


def _stat_mtime(p: str) -> int | None:
    try:
        return os.stat(p).st_mtime_ns
    except OSError:
        return None


def _stamp(
    kind: str, path: str, component: str | None, level_paths: tuple[str, ...], level: int
) -> tuple[int | None, int | None]:
    """(mtime_ns, size) stamp: see :meth:`ArraySource.identity`."""
    if kind == "tiff":
        try:
            st = os.stat(path)
        except OSError:
            return None, None
        return st.st_mtime_ns, st.st_size
    dirs = [path]
    if component and kind == "ome-zarr":
        dirs.append(_join(path, component))
    arr_dir = _join(path, level_paths[level]) if level_paths else path
    if arr_dir not in dirs:
        dirs.append(arr_dir)
    if is_url(path):  # objects: newest last-modified (1 s resolution) + their ETags
        heads = [h for d in dirs for m in _ZARR_META if (h := head(os.path.join(d, m)))]
        url_times = [int(h["last_modified"].timestamp() * 1e9) for h in heads]
        tags = hashlib.sha256("".join(str(h.get("e_tag")) for h in heads).encode())
        return (max(url_times) if url_times else None), int(tags.hexdigest()[:12], 16)
    times: list[int | None] = [_stat_mtime(os.path.join(d, m)) for d in dirs for m in _ZARR_META]
    times.append(_stat_mtime(arr_dir))  # the array directory itself (recreated array)
    known = [t for t in times if t is not None]
    return (max(known) if known else None), None


def _axis_names_from(axes: list[dict] | None) -> tuple[str, ...] | None:
    if not axes:
        return None
    return tuple(str(a.get("name", "?")).lower() for a in axes)


def _zarr_dim_names(arr: Any) -> tuple[str, ...] | None:
    try:
        names = getattr(arr.metadata, "dimension_names", None)
    except Exception:  # pragma: no cover - defensive
        names = None
    if not names:
        names = arr.attrs.get("_ARRAY_DIMENSIONS") if hasattr(arr, "attrs") else None
    if names and all(isinstance(n, str) and n for n in names) and len(names) == arr.ndim:
        return tuple(n.lower() for n in names)
    return None


def _channel_from_names(
    names: tuple[str, ...] | None, pref: tuple[str, ...] = ("c", "channel")
) -> int | None:
    if not names:
        return None
    for p in pref:
        if p in names:
            return names.index(p)
    return None


def _shards(arr: Any) -> tuple[int, ...] | None:
    try:
        s = arr.shards
    except Exception:  # pragma: no cover - zarr without sharding support
        return None
    return tuple(int(v) for v in s) if s else None


def _ome_tiff_scale(
    tf: Any, axes: str, shape0: tuple[int, ...], shape: tuple[int, ...]
) -> list[float] | None:
    xml = getattr(tf, "ome_metadata", None)
    if not xml:
        return None
    try:
        import xml.etree.ElementTree as ET

        pixels = next(el for el in ET.fromstring(xml).iter() if el.tag.endswith("Pixels"))
    except Exception:
        return None
    sizes = {a: pixels.get(f"PhysicalSize{a.upper()}") for a in "xyz"}
    if not any(sizes.values()):
        return None
    scale = []
    for ax, n0, n in zip(axes, shape0, shape):
        size = sizes.get(ax)
        base = float(size) if size else 1.0
        scale.append(base * (n0 / n if ax in "xyz" and n else 1.0))
    return scale

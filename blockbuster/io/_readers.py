"""open_path: what a path holds (zarr array or group, OME-Zarr image, TIFF) and its source.

One reader per kind of input (zarr v2/v3 arrays and groups, OME-Zarr 0.1-0.5 images and
bioformats2raw containers, TIFF / OME-TIFF files); each inspects metadata only and builds
an :class:`~blockbuster.io.ArraySource`, or raises
:class:`~blockbuster.errors.InputError` with one line naming the path and what was
expected. Re-exported by :mod:`blockbuster.io`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from blockbuster.errors import (
    InputError,
    InputNotFoundError,
    InvalidParameterError,
    PathNotAllowedError,
)

from ._array_source import ArraySource, _open_zarr_array
from ._metadata import (
    _ZARR_META,
    _axis_names_from,
    _channel_from_names,
    _check_level,
    _group_attrs,
    _join,
    _node_type,
    _ome_tiff_scale,
    _scale_of,
    _shards,
    _stamp,
    _zarr_dim_names,
    channel_axis_of,
    ngff_metadata,
    normalize_axes,
)
from ._places import member_path, parse_location
from ._stores import check_url, is_prefix, is_url, list_prefix, redact

__all__ = ["open_path", "SUPPORTED_INPUTS"]


#: What :func:`open_path` accepts, quoted in its error messages.
SUPPORTED_INPUTS = (
    "a zarr v2/v3 array, a zarr group with component=<array path>, "
    "an OME-Zarr 0.4/0.5 image group, or a TIFF/OME-TIFF file"
)

_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2", ".ome.tif", ".ome.tiff")


# --------------------------------------------------------------------------------------
# open_path
# --------------------------------------------------------------------------------------
def open_path(
    path: str | os.PathLike,
    *,
    level: int = 0,
    component: str | None = None,
    param: str = "image",
) -> ArraySource:
    """Open an image stored at ``path`` without reading its pixels.

    Parameters
    ----------
    path : str or os.PathLike
        A zarr v2/v3 array, a zarr group (with ``component``), an OME-Zarr 0.4/0.5 image
        group, or a TIFF / OME-TIFF file: a local path (``file://`` is accepted) or,
        for zarr and OME-Zarr, a URL (``s3://``, ``gs://``, ``az://``, ``http(s)://``).
    level : int, default 0
        Pyramid level of an OME-Zarr image or a pyramidal OME-TIFF; 0 is full resolution,
        negative values count from the coarsest.  Must be 0 for a plain array.
    component : str, optional
        Zarr: the path inside the group of an array or OME-Zarr image group (e.g.
        ``"0"`` in a bioformats2raw container, ``"A/1/0"`` in a plate).  TIFF: the series
        index (``"0"`` by default).

    Returns
    -------
    ArraySource

    Raises
    ------
    InputError
        The path is missing (:class:`~blockbuster.errors.InputNotFoundError`, a
        ``FileNotFoundError``) or not one of the supported kinds; ``component`` does
        not exist; a zarr group was given without ``component``.
    UnsupportedLocationError
        ``path`` is a URL or holds fsspec ``::`` chaining (named by ``param``).
    PathNotAllowedError
        ``component`` or a dataset path in the metadata leaves the store.
    InvalidParameterError
        ``level`` is out of range (the message lists the available levels).

    Examples
    --------
    >>> import tempfile, os, numpy as np, zarr
    >>> d = tempfile.mkdtemp()
    >>> g = zarr.open_group(os.path.join(d, "img.zarr"), mode="w")
    >>> for i, s in enumerate([(2, 32, 32), (2, 16, 16)]):
    ...     _ = g.create_array(str(i), shape=s, chunks=(1, 16, 16), dtype="u2")
    >>> g.attrs["ome"] = {"version": "0.5", "multiscales": [{
    ...     "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"},
    ...              {"name": "x", "type": "space"}],
    ...     "datasets": [{"path": str(i), "coordinateTransformations": [
    ...         {"type": "scale", "scale": [1.0, 2.0 ** i, 2.0 ** i]}]} for i in range(2)]}]}
    >>> src = open_path(os.path.join(d, "img.zarr"), level=1)
    >>> src.kind, src.shape, src.channel_axis, src.scale, src.levels
    ('ome-zarr', (2, 16, 16), 0, [1.0, 2.0, 2.0], [(2, 32, 32), (2, 16, 16)])
    >>> open_path(os.path.join(d, "nope.zarr"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    blockbuster.errors.InputNotFoundError: input '.../nope.zarr' does not exist; expected a zarr ...
    """
    if isinstance(path, str) and is_url(path):
        return _open_url(os.fspath(parse_location(path, param=param)), level, component)
    raw = os.fspath(path)
    if raw.startswith("file://"):
        raw = raw[len("file://") :]
    p = os.path.realpath(parse_location(raw, param=param))  # URLs and '::' refused here
    if not os.path.exists(p):
        raise InputNotFoundError(f"input {raw!r} does not exist; expected {SUPPORTED_INPUTS}")
    if os.path.isfile(p) and os.path.basename(p) in _ZARR_META:
        p = os.path.dirname(p)  # a metadata file inside a store: open the store
    if os.path.isfile(p):
        return _open_tiff(p, raw, level, component)
    if not os.path.isdir(p):
        raise InputError(f"input {raw!r} is not a file or directory; expected {SUPPORTED_INPUTS}")
    return _open_zarr(p, raw, level, component)


def _open_url(url: str, level: int, component: str | None) -> ArraySource:
    """A zarr array or OME-Zarr image at a URL (metadata objects only are read)."""
    url = url.rstrip("/")
    check_url(url, what="image")
    if os.path.basename(url) in _ZARR_META:
        url = os.path.dirname(url)
    if _node_type(url)[0] is None:
        if url.lower().endswith(_TIFF_SUFFIXES):
            raise InputError(
                f"input {redact(url)!r}: TIFF files are read from local paths only; copy it "
                "locally or convert it to OME-Zarr"
            )
        what = (
            "does not exist"
            if not is_prefix(url)
            else "is not a zarr store (no zarr.json, .zarray or .zgroup)"
        )
        raise InputError(f"input {redact(url)!r} {what}; expected {SUPPORTED_INPUTS}")
    return _open_zarr(url, redact(url), level, component)


def _isdir(p: str) -> bool:
    return is_prefix(p) if is_url(p) else os.path.isdir(p)


def _open_zarr(root: str, raw: str, level: int, component: str | None) -> ArraySource:
    comp = component.strip("/") if component else None
    target = member_path(root, comp, what="component") if comp else root
    kind, fmt = _node_type(root)
    if kind is None:
        raise InputError(
            f"input {raw!r} is a directory but not a zarr store (no zarr.json, "
            f".zarray or .zgroup); expected {SUPPORTED_INPUTS}"
        )
    if comp:
        if kind == "array":
            raise InputError(
                f"input {raw!r} is a zarr array, which has no component "
                f"{component!r}; pass component=None"
            )
        if not _isdir(target):
            raise InputError(
                f"component {component!r} does not exist in zarr group {raw!r}; "
                f"members: {_members(root)}"
            )
        kind, fmt = _node_type(target)
        if kind is None:
            raise InputError(
                f"component {component!r} of {raw!r} is not a zarr array or "
                f"group; members: {_members(root)}"
            )
    if kind == "group":
        return _open_group(root, comp, target, fmt, raw, level)
    # an array
    parent = os.path.dirname(target)
    if comp is None:
        pk, pfmt = _node_type(parent)
        if pk == "group":
            ome, _ = ngff_metadata(_group_attrs(parent, pfmt))
            ms = (ome or {}).get("multiscales") or []
            paths = [
                str(d.get("path", "")).strip("/")
                for d in (ms[0].get("datasets", []) if ms else [])
            ]
            name = os.path.basename(target)
            if name in paths:  # one level array inside an OME-Zarr image
                if level not in (0, None):
                    raise InvalidParameterError(
                        f"level={level} was given but {raw!r} is one level array (level "
                        f"{paths.index(name)}) of the OME-Zarr image {parent!r}; pass the "
                        f"image group path with level={level} instead"
                    )
                return _open_ome(parent, None, parent, pfmt, raw, paths.index(name))
    try:
        arr = _open_zarr_array(target)
    except Exception as exc:
        raise InputError(
            f"input {raw!r}: cannot open zarr array ({type(exc).__name__}: {_one_line(exc)})"
        ) from exc
    levels = [tuple(int(s) for s in arr.shape)]
    _check_level(level, levels, raw)
    names = _zarr_dim_names(arr)
    stamp = _stamp("zarr", root, comp, (comp or "",), 0)
    return ArraySource(
        path=root,
        kind="zarr",
        shape=levels[0],
        dtype=np.dtype(arr.dtype),
        chunks=tuple(int(c) for c in arr.chunks),
        channel_axis=_channel_from_names(names),
        levels=levels,
        level=0,
        component=comp,
        zarr_format=int(arr.metadata.zarr_format),
        axis_names=names,
        shards=_shards(arr),
        level_paths=(comp or "",),
        _stamp=stamp,
    )


def _members(d: str, limit: int = 12) -> str:
    if is_url(d):
        try:
            names = sorted(n.rpartition("/")[2] for n in list_prefix(d)[0])
        except OSError:
            return "[]"
        names = [n for n in names if not n.startswith(".")]
        more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
        return "[" + ", ".join(repr(n) for n in names[:limit]) + "]" + more
    try:
        names = sorted(
            e
            for e in os.listdir(d)
            if not e.startswith(".") and e != "zarr.json" and os.path.isdir(os.path.join(d, e))
        )
    except OSError:
        return "[]"
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return "[" + ", ".join(repr(n) for n in names[:limit]) + "]" + more


def _open_group(
    root: str, comp: str | None, target: str, fmt: int | None, raw: str, level: int
) -> ArraySource:
    attrs = _group_attrs(target, fmt)
    ome, _version = ngff_metadata(attrs)
    where = f"{raw!r}" + (f" component {comp!r}" if comp else "")
    if ome is not None and ome.get("multiscales"):
        return _open_ome(root, comp, target, fmt, raw, level)
    if ome is not None and "bioformats2raw.layout" in ome:
        series = [e for e in ("0", "1") if _isdir(os.path.join(target, e))]
        if series == ["0"]:
            sub = "0" if comp is None else f"{comp}/0"
            return _open_ome(root, sub, _join(root, sub), fmt, raw, level)
        raise InputError(
            f"{where} is a bioformats2raw container with several images; pass "
            f"component='0' (or another series): members {_members(target)}"
        )
    if ome is not None and ("plate" in ome or "well" in ome):
        what = "plate" if "plate" in ome else "well"
        hint = "'A/1/0'" if what == "plate" else "'0'"
        raise InputError(
            f"{where} is an OME-Zarr {what}, not an image; pass component= the "
            f"path of one field, e.g. {hint}"
        )
    if ome is not None and "labels" in ome:
        raise InputError(
            f"{where} is an OME-Zarr labels group; pass component= one of {ome.get('labels')}"
        )
    raise InputError(
        f"{where} is a zarr group, not an array or OME-Zarr image; pass "
        f"component= the path of an array in it: members {_members(target)}"
    )


def _open_ome(
    root: str, comp: str | None, group_dir: str, fmt: int | None, raw: str, level: int
) -> ArraySource:
    ome, version = ngff_metadata(_group_attrs(group_dir, fmt))
    if ome is None:  # callers come here for groups with OME-NGFF metadata only
        raise InputError(f"{raw!r}: the group {group_dir!r} holds no OME-NGFF metadata")
    ms = ome["multiscales"][0]
    datasets = ms.get("datasets") or []
    if not datasets:
        raise InputError(f"OME-Zarr image {raw!r} has no datasets in its multiscales metadata")
    rel = [str(d.get("path", "")).strip("/") for d in datasets]
    level_paths = tuple(f"{comp}/{r}" if comp else r for r in rel)
    arrays = []
    for r, lp in zip(rel, level_paths):
        member_path(group_dir, r, what="dataset path")  # never outside the image
        try:
            arrays.append(_open_zarr_array(_join(root, lp)))
        except Exception as exc:
            raise InputError(
                f"OME-Zarr image {raw!r}: dataset {lp!r} cannot be opened "
                f"({type(exc).__name__}: {_one_line(exc)})"
            ) from exc
    levels = [tuple(int(s) for s in a.shape) for a in arrays]
    lv = _check_level(level, levels, raw)
    arr = arrays[lv]
    axes = normalize_axes(ms.get("axes"), arr.ndim)
    if axes is not None and len(axes) != arr.ndim:
        axes = None
    scale = _scale_of(datasets[lv].get("coordinateTransformations"), arr.ndim)
    glob = _scale_of(ms.get("coordinateTransformations"), arr.ndim)
    if scale is not None and glob is not None:
        scale = [a * b for a, b in zip(scale, glob)]
    elif scale is None:
        scale = glob
    names = _axis_names_from(axes) or _zarr_dim_names(arr)
    ca = channel_axis_of(axes) if axes else _channel_from_names(names)
    stamp = _stamp("ome-zarr", root, comp, level_paths, lv)
    return ArraySource(
        path=root,
        kind="ome-zarr",
        shape=levels[lv],
        dtype=np.dtype(arr.dtype),
        chunks=tuple(int(c) for c in arr.chunks),
        channel_axis=ca,
        axes=axes,
        scale=scale,
        levels=levels,
        level=lv,
        component=comp,
        ngff_version=version,
        zarr_format=int(arr.metadata.zarr_format),
        axis_names=names,
        shards=_shards(arr),
        level_paths=level_paths,
        _stamp=stamp,
    )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _check_ome_files(tf: Any, p: str) -> None:
    """Refuse a multi-file OME-TIFF whose OME-XML names a file outside the master file's
    folder (``UUID FileName``, ``BinaryOnly MetadataFile``): tifffile would read pixels
    from wherever it points (``../../other.tif``, an absolute path, a link out)."""
    xml = tf.ome_metadata if tf.is_ome else None
    if not xml:
        return
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return  # tifffile reads no file list from it either
    folder = os.path.dirname(os.path.abspath(p))
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        name = el.get("FileName") if tag == "UUID" else None
        if tag == "BinaryOnly":
            name = el.get("MetadataFile")
        if not name:
            continue
        try:
            member_path(folder, name, what="file name")
        except PathNotAllowedError:
            attr = "FileName" if tag == "UUID" else "MetadataFile"
            raise PathNotAllowedError(
                f"input {p!r} is a multi-file OME-TIFF whose OME-XML names the file "
                f"{name!r} ({tag} {attr}), outside the folder {folder!r} that holds it: "
                "blockbuster reads only the files inside that folder. Put the files of "
                "the series in one folder and name them relative to it"
            ) from None


def _open_tiff(p: str, raw: str, level: int, component: str | None) -> ArraySource:
    import tifffile

    try:
        tf = tifffile.TiffFile(p)
    except Exception as exc:
        lower = p.lower()
        what = (
            "a TIFF file that tifffile cannot read"
            if lower.endswith(_TIFF_SUFFIXES)
            else "not a TIFF file (nor a zarr store)"
        )
        raise InputError(
            f"input {raw!r} is {what} ({_one_line(exc)}); expected {SUPPORTED_INPUTS}"
        ) from exc
    try:
        _check_ome_files(tf, p)  # before any pixel is read
        try:
            series_i = int(component) if component not in (None, "") else 0
            series = tf.series[series_i]
        except (ValueError, IndexError):
            raise InputError(
                f"component={component!r} is not a series of TIFF {raw!r}; it "
                f"has series 0..{len(tf.series) - 1}"
            ) from None
        levels = [tuple(int(s) for s in lv.shape) for lv in series.levels]
        lv = _check_level(level, levels, raw)
        store = series.aszarr(level=lv)
        import zarr

        arr = zarr.open(store, mode="r")
        if not isinstance(arr, zarr.Array):
            raise InputError(
                f"TIFF {raw!r} series {series_i} level {lv} did not open as one array"
            )
        axes_str = str(series.axes).lower()
        names = tuple(axes_str) if len(axes_str) == len(levels[lv]) else None
        ca = _channel_from_names(names, pref=("c", "s"))
        scale = _ome_tiff_scale(tf, axes_str, levels[0], levels[lv]) if names else None
        chunks = tuple(int(c) for c in arr.chunks)
        dtype = np.dtype(arr.dtype)
        kind_ome = bool(tf.is_ome)
    finally:
        tf.close()
    st = os.stat(p)
    return ArraySource(
        path=p,
        kind="tiff",
        shape=levels[lv],
        dtype=dtype,
        chunks=chunks,
        channel_axis=ca,
        scale=scale,
        levels=levels,
        level=lv,
        component=str(series_i) if component not in (None, "") else None,
        ngff_version=None,
        axis_names=names,
        level_paths=(),
        ome_tiff=kind_ome,
        _stamp=(st.st_mtime_ns, st.st_size),
    )

"""Opening images stored on disk — zarr arrays, OME-Zarr images, TIFF / OME-TIFF — lazily.

:func:`open_path` inspects a path (metadata only, never pixels) and returns an
:class:`ArraySource`: a small, picklable description of one array (one pyramid level) that
reads any region on demand.  Only *how to reopen* the data travels when it is pickled (to
a Dask worker, a subprocess, a Prefect task); each process reopens the store the first time
it reads and keeps the opened array in a per-process cache, so thousands of tile reads in
one worker open the store once.

Accepted inputs
---------------
1. a zarr v2 or v3 **array** (``zarr.open_array``);
2. a zarr **group** plus ``component``, the path of an array (or of an OME-Zarr image) in it;
3. an **OME-Zarr image group**: NGFF 0.4 (zarr v2, ``multiscales`` in ``.zattrs``) or 0.5
   (zarr v3, ``attributes.ome.multiscales`` in ``zarr.json``); older 0.1–0.3 images are read
   too.  ``level`` picks the dataset (0, full resolution, by default; negative values count
   from the coarsest).  The axis of type ``"channel"`` becomes ``channel_axis``, the
   ``scale`` transforms become ``scale``.  A bioformats2raw container holding a single image
   opens that image; a path pointing at one level array *inside* an OME-Zarr image opens the
   image at that level;
4. a **TIFF / OME-TIFF** file, read through tifffile's zarr store (``ZarrTiffStore``); the
   levels of a pyramidal OME-TIFF are the levels of the source, the ``C`` (else ``S``) axis
   is the channel axis, OME ``PhysicalSize*`` give the scale.

Anything else raises :class:`~blockbuster.errors.InputError` (an ``OSError``) with one line
naming the path and what was expected.

Examples
--------
>>> import tempfile, os, numpy as np, zarr
>>> d = tempfile.mkdtemp()
>>> z = zarr.create_array(os.path.join(d, "a.zarr"), shape=(4, 6), chunks=(2, 3), dtype="u2")
>>> z[...] = np.arange(24).reshape(4, 6)
>>> src = open_path(os.path.join(d, "a.zarr"))
>>> src.kind, src.shape, src.chunks, str(src.dtype)
('zarr', (4, 6), (2, 3), 'uint16')
>>> src.read((slice(1, 3), slice(0, 2)))
array([[ 6,  7],
       [12, 13]], dtype=uint16)
>>> import pickle
>>> pickle.loads(pickle.dumps(src)).read((slice(0, 1),)).tolist()
[[0, 1, 2, 3, 4, 5]]
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError, InvalidParameterError

__all__ = ["ArraySource", "open_path", "describe", "SUPPORTED_INPUTS"]

#: What :func:`open_path` accepts, quoted in its error messages.
SUPPORTED_INPUTS = ("a zarr v2/v3 array, a zarr group with component=<array path>, "
                    "an OME-Zarr 0.4/0.5 image group, or a TIFF/OME-TIFF file")

_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2", ".ome.tif", ".ome.tiff")
_ZARR_META = ("zarr.json", ".zarray", ".zgroup", ".zattrs")
_KNOWN_AXIS_TYPES = {"x": "space", "y": "space", "z": "space", "c": "channel", "t": "time"}


# --------------------------------------------------------------------------------------
# per-process cache of opened arrays
# --------------------------------------------------------------------------------------
_CACHE: OrderedDict[tuple, Any] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 32


def _cached(key: tuple, opener) -> Any:
    """Return ``opener()`` cached under ``key`` for this process (LRU, thread-safe).

    The process id is part of the key: a forked child never reuses its parent's open
    file handles (a shared file offset would corrupt concurrent TIFF reads).
    """
    key = (os.getpid(),) + key
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
    value = opener()  # opened outside the lock; a rare double open is harmless
    with _CACHE_LOCK:
        _CACHE[key] = value
        _CACHE.move_to_end(key)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return value


def clear_cache() -> None:
    """Forget every array opened by this process (they are reopened on the next read)."""
    with _CACHE_LOCK:
        _CACHE.clear()


# --------------------------------------------------------------------------------------
# ArraySource
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArraySource:
    """One stored array (one pyramid level), read lazily; cheap to pickle.

    Build it with :func:`open_path`.  Pickling carries only the fields below (a few
    hundred bytes); the opened zarr array or TIFF file lives in a per-process cache and is
    reopened on first use in each process.  It also works as a dask "array-like"
    (``shape``, ``dtype``, ``ndim``, ``__getitem__`` and a deterministic
    ``__dask_tokenize__``), so ``dask.array.from_array(src, chunks=src.chunks)`` builds a
    dask array whose graph holds only this small object.

    Attributes
    ----------
    path : str
        Resolved absolute path of the store root (zarr / OME-Zarr) or of the TIFF file.
    kind : str
        ``"zarr"``, ``"ome-zarr"`` or ``"tiff"``.
    shape, dtype, chunks
        Shape, dtype and storage chunk shape of the chosen level (inner chunks when the
        zarr v3 array is sharded: see ``shards``).
    channel_axis : int or None
        Axis of type ``"channel"`` in the NGFF metadata, the ``C`` (else ``S``) axis of a
        TIFF series, or a dimension named ``c``/``channel`` of a plain zarr array.
    axes : list of dict or None
        NGFF axes of the image (OME-Zarr only).
    scale : list of float or None
        Physical size of a voxel of the chosen level along each axis (NGFF ``scale``
        transforms, dataset and multiscale ones multiplied; OME-TIFF ``PhysicalSize*``).
    levels : list of tuple of int
        Shapes of all pyramid levels of the image (``[shape]`` when there is no pyramid).
    level : int
        Index of the chosen level in ``levels``.
    component : str or None
        Path inside the store of the image group or array (zarr), or the TIFF series index.
    ngff_version : str or None
        ``"0.4"``, ``"0.5"``, ... for OME-Zarr.
    zarr_format : int or None
        2 or 3 for zarr kinds.
    axis_names : tuple of str or None
        Lower-case axis names (NGFF names, TIFF series axes, zarr dimension names).
    shards : tuple of int or None
        Shard shape of a sharded zarr v3 array.
    level_paths : tuple of str
        Per level, the array's path inside ``path`` (zarr kinds); ``()`` for TIFF.
    ome_tiff : bool
        The TIFF carries OME-XML metadata.
    """

    path: str
    kind: str
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]
    channel_axis: int | None = None
    axes: list[dict] | None = None
    scale: list[float] | None = None
    levels: list[tuple[int, ...]] = field(default_factory=list)
    level: int = 0
    component: str | None = None
    ngff_version: str | None = None
    zarr_format: int | None = None
    axis_names: tuple[str, ...] | None = None
    shards: tuple[int, ...] | None = None
    level_paths: tuple[str, ...] = ()
    ome_tiff: bool = False
    _stamp: Any = field(default=None, repr=False, compare=False)

    # -- array-like protocol -----------------------------------------------------------
    @property
    def ndim(self) -> int:
        """Number of axes."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of elements of the chosen level."""
        return int(np.prod(self.shape, dtype=np.int64))

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        return self.read(key)

    def __dask_tokenize__(self):
        return ("blockbuster.ArraySource", self.kind, self.path, self.component,
                self.level, self.shape, str(self.dtype), self._stamp)

    # -- reading -----------------------------------------------------------------------
    def _array(self, level: int):
        """The opened zarr array of ``level`` in this process (cached)."""
        if self.kind == "tiff":
            series = int(self.component or 0)
            return _cached(("tiff", self.path, series, level, self._stamp),
                           lambda: _open_tiff_level(self.path, series, level))[0]
        sub = self.level_paths[level] if self.level_paths else ""
        return _cached(("zarr", self.path, sub, self._stamp),
                       lambda: _open_zarr_array(_join(self.path, sub)))

    def read(self, slices: tuple[slice | int, ...]) -> np.ndarray:
        """Read a region of the chosen level into a NumPy array.

        Parameters
        ----------
        slices : tuple of slice or int
            One entry per leading axis (missing trailing axes are taken whole).

        Returns
        -------
        numpy.ndarray
            The region; only the chunks it overlaps are read.

        Examples
        --------
        >>> import tempfile, os, numpy as np, tifffile
        >>> p = os.path.join(tempfile.mkdtemp(), "im.tif")
        >>> tifffile.imwrite(p, np.arange(64 * 64, dtype="u2").reshape(64, 64), tile=(16, 16))
        >>> open_path(p).read((slice(0, 2), slice(30, 33))).tolist()
        [[30, 31, 32], [94, 95, 96]]
        """
        return np.asarray(self._array(self.level)[tuple(slices)])

    def read_level(self, level: int, slices: tuple[slice | int, ...] | None = None
                   ) -> np.ndarray:
        """Read (a region of) another pyramid level, e.g. a coarse one for cheap sampling.

        Parameters
        ----------
        level : int
            Index into ``levels`` (negative counts from the coarsest).
        slices : tuple of slice or int, optional
            Region of that level; the whole level when omitted (pick a small level).

        Raises
        ------
        InvalidParameterError
            ``level`` does not exist.

        Examples
        --------
        >>> import tempfile, os, numpy as np, zarr
        >>> p = os.path.join(tempfile.mkdtemp(), "a.zarr")
        >>> zarr.create_array(p, shape=(3, 3), dtype="u1")[...] = 7
        >>> int(open_path(p).read_level(-1).sum())
        63
        """
        level = _check_level(level, self.levels, self.path)
        arr = self._array(level)
        return np.asarray(arr[...] if slices is None else arr[tuple(slices)])

    # -- identity ----------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """What identifies this input for caching: location, level, layout and a stamp.

        The stamp (``mtime_ns``; plus ``size`` for a TIFF) is the newest modification time
        of the store's metadata files (``zarr.json``/``.zarray``/``.zattrs``/``.zgroup``
        of the image group and of the level array) and of the level array's directory, or
        the TIFF file's mtime and size.  It changes when the store is rewritten or
        recreated; pixels are never hashed.  The image group's own directory is left out
        on purpose: writing labels into ``<image>/labels`` must not change the identity of
        the image.  It is recomputed at each call.

        Returns
        -------
        dict
            JSON-able: ``kind``, ``path``, ``component``, ``level``, ``shape``, ``dtype``,
            ``chunks``, ``mtime_ns``, ``size``.
        """
        stamp = _stamp(self.kind, self.path, self.component, self.level_paths,
                       self.level)
        return {"kind": self.kind, "path": self.path, "component": self.component,
                "level": self.level, "shape": list(self.shape), "dtype": str(self.dtype),
                "chunks": list(self.chunks), "mtime_ns": stamp[0], "size": stamp[1]}

    def __repr__(self) -> str:
        return f"ArraySource({describe(self)})"


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def _join(root: str, sub: str | None) -> str:
    return os.path.join(root, *sub.strip("/").split("/")) if sub and sub.strip("/") else root


def _open_zarr_array(p: str):
    import zarr
    return zarr.open_array(p, mode="r")


def _open_tiff_level(path: str, series: int, level: int):
    import tifffile
    import zarr
    tf = tifffile.TiffFile(path)
    store = tf.series[series].aszarr(level=level)
    return zarr.open(store, mode="r"), tf, store  # keep the file and store alive


def _check_level(level: Any, levels: list, path: str) -> int:
    n = len(levels)
    try:
        lv = int(level)
        if lv != level:
            raise ValueError
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"level={level!r} is not an integer; available levels of {path!r}: "
            f"0..{n - 1}") from None
    if not -n <= lv < n:
        shapes = ", ".join(f"{i}: {tuple(s)}" for i, s in enumerate(levels))
        raise InvalidParameterError(
            f"level={level} is out of range for {path!r}; available levels: {shapes}")
    return lv % n


def _read_json(p: str) -> dict | None:
    try:
        with open(p, "rb") as f:
            return json.loads(f.read() or b"{}")
    except (OSError, ValueError):
        return None


def _node_type(d: str) -> tuple[str | None, int | None]:
    """('array' | 'group' | None, zarr_format) of a local directory, from its metadata."""
    meta = _read_json(os.path.join(d, "zarr.json"))
    if meta is not None and meta.get("zarr_format") == 3:
        return meta.get("node_type"), 3
    if os.path.exists(os.path.join(d, ".zarray")):
        return "array", 2
    if os.path.exists(os.path.join(d, ".zgroup")) or os.path.exists(os.path.join(d, ".zattrs")):
        return "group", 2
    return None, None


def _group_attrs(d: str, zarr_format: int) -> dict:
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
    if any(k in attrs for k in ("multiscales", "plate", "well", "bioformats2raw.layout",
                                "labels", "image-label")):
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


def _stamp(kind: str, path: str, component: str | None, level_paths: tuple[str, ...],
           level: int) -> tuple[int | None, int | None]:
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
    times = [_stat_mtime(os.path.join(d, m)) for d in dirs for m in _ZARR_META]
    times.append(_stat_mtime(arr_dir))  # the array directory itself (recreated array)
    times = [t for t in times if t is not None]
    return (max(times) if times else None), None


def _axis_names_from(axes: list[dict] | None) -> tuple[str, ...] | None:
    if not axes:
        return None
    return tuple(str(a.get("name", "?")).lower() for a in axes)


def _zarr_dim_names(arr) -> tuple[str, ...] | None:
    try:
        names = getattr(arr.metadata, "dimension_names", None)
    except Exception:  # pragma: no cover - defensive
        names = None
    if not names:
        names = arr.attrs.get("_ARRAY_DIMENSIONS") if hasattr(arr, "attrs") else None
    if names and all(isinstance(n, str) and n for n in names) and len(names) == arr.ndim:
        return tuple(n.lower() for n in names)
    return None


def _channel_from_names(names: tuple[str, ...] | None, pref=("c", "channel")) -> int | None:
    if not names:
        return None
    for p in pref:
        if p in names:
            return names.index(p)
    return None


def _shards(arr) -> tuple[int, ...] | None:
    try:
        s = arr.shards
    except Exception:  # pragma: no cover - zarr without sharding support
        return None
    return tuple(int(v) for v in s) if s else None


# --------------------------------------------------------------------------------------
# open_path
# --------------------------------------------------------------------------------------
def open_path(path: str | os.PathLike, *, level: int = 0,
              component: str | None = None) -> ArraySource:
    """Open an image stored at ``path`` without reading its pixels.

    Parameters
    ----------
    path : str or os.PathLike
        A zarr v2/v3 array, a zarr group (with ``component``), an OME-Zarr 0.4/0.5 image
        group, or a TIFF / OME-TIFF file.  Local paths only (``file://`` is accepted).
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
        The path is missing, remote, or not one of the supported kinds; ``component`` does
        not exist; a zarr group was given without ``component``.
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
    blockbuster.errors.InputError: input '.../nope.zarr' does not exist; expected a zarr ...
    """
    raw = os.fspath(path)
    if raw.startswith("file://"):
        raw = raw[len("file://"):]
    elif "://" in raw:
        raise InputError(f"input {raw!r} is a remote URL; only local paths are supported "
                         f"(expected {SUPPORTED_INPUTS})")
    p = os.path.realpath(os.path.expanduser(raw))
    if not os.path.exists(p):
        raise InputError(f"input {raw!r} does not exist; expected {SUPPORTED_INPUTS}")
    if os.path.isfile(p) and os.path.basename(p) in _ZARR_META:
        p = os.path.dirname(p)  # a metadata file inside a store: open the store
    if os.path.isfile(p):
        return _open_tiff(p, raw, level, component)
    if not os.path.isdir(p):
        raise InputError(f"input {raw!r} is not a file or directory; expected "
                         f"{SUPPORTED_INPUTS}")
    return _open_zarr(p, raw, level, component)


def _open_zarr(root: str, raw: str, level: int, component: str | None) -> ArraySource:
    comp = component.strip("/") if component else None
    target = _join(root, comp)
    kind, fmt = _node_type(root)
    if kind is None:
        raise InputError(f"input {raw!r} is a directory but not a zarr store (no zarr.json, "
                         f".zarray or .zgroup); expected {SUPPORTED_INPUTS}")
    if comp:
        if kind == "array":
            raise InputError(f"input {raw!r} is a zarr array, which has no component "
                             f"{component!r}; pass component=None")
        if not os.path.isdir(target):
            raise InputError(f"component {component!r} does not exist in zarr group {raw!r}; "
                             f"members: {_members(root)}")
        kind, fmt = _node_type(target)
        if kind is None:
            raise InputError(f"component {component!r} of {raw!r} is not a zarr array or "
                             f"group; members: {_members(root)}")
    if kind == "group":
        return _open_group(root, comp, target, fmt, raw, level)
    # an array
    parent = os.path.dirname(target)
    if comp is None:
        pk, pfmt = _node_type(parent)
        if pk == "group":
            ome, _ = ngff_metadata(_group_attrs(parent, pfmt))
            ms = (ome or {}).get("multiscales") or []
            paths = [str(d.get("path", "")).strip("/") for d in (ms[0].get("datasets", [])
                                                                 if ms else [])]
            name = os.path.basename(target)
            if name in paths:  # one level array inside an OME-Zarr image
                if level not in (0, None):
                    raise InvalidParameterError(
                        f"level={level} was given but {raw!r} is one level array (level "
                        f"{paths.index(name)}) of the OME-Zarr image {parent!r}; pass the "
                        f"image group path with level={level} instead")
                return _open_ome(parent, None, parent, pfmt, raw, paths.index(name))
    try:
        arr = _open_zarr_array(target)
    except Exception as exc:
        raise InputError(f"input {raw!r}: cannot open zarr array "
                         f"({type(exc).__name__}: {_one_line(exc)})") from exc
    levels = [tuple(int(s) for s in arr.shape)]
    _check_level(level, levels, raw)
    names = _zarr_dim_names(arr)
    stamp = _stamp("zarr", root, comp, (comp or "",), 0)
    return ArraySource(
        path=root, kind="zarr", shape=levels[0], dtype=np.dtype(arr.dtype),
        chunks=tuple(int(c) for c in arr.chunks), channel_axis=_channel_from_names(names),
        levels=levels, level=0, component=comp, zarr_format=int(arr.metadata.zarr_format),
        axis_names=names, shards=_shards(arr), level_paths=(comp or "",), _stamp=stamp)


def _members(d: str, limit: int = 12) -> str:
    try:
        names = sorted(e for e in os.listdir(d) if not e.startswith(".") and e != "zarr.json"
                       and os.path.isdir(os.path.join(d, e)))
    except OSError:
        return "[]"
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return "[" + ", ".join(repr(n) for n in names[:limit]) + "]" + more


def _open_group(root: str, comp: str | None, target: str, fmt: int, raw: str,
                level: int) -> ArraySource:
    attrs = _group_attrs(target, fmt)
    ome, _version = ngff_metadata(attrs)
    where = f"{raw!r}" + (f" component {comp!r}" if comp else "")
    if ome is not None and ome.get("multiscales"):
        return _open_ome(root, comp, target, fmt, raw, level)
    if ome is not None and "bioformats2raw.layout" in ome:
        series = [e for e in ("0", "1") if os.path.isdir(os.path.join(target, e))]
        if series == ["0"]:
            sub = "0" if comp is None else f"{comp}/0"
            return _open_ome(root, sub, _join(root, sub), fmt, raw, level)
        raise InputError(f"{where} is a bioformats2raw container with several images; pass "
                         f"component='0' (or another series): members {_members(target)}")
    if ome is not None and ("plate" in ome or "well" in ome):
        what = "plate" if "plate" in ome else "well"
        hint = "'A/1/0'" if what == "plate" else "'0'"
        raise InputError(f"{where} is an OME-Zarr {what}, not an image; pass component= the "
                         f"path of one field, e.g. {hint}")
    if ome is not None and "labels" in ome:
        raise InputError(f"{where} is an OME-Zarr labels group; pass component= one of "
                         f"{ome.get('labels')}")
    raise InputError(f"{where} is a zarr group, not an array or OME-Zarr image; pass "
                     f"component= the path of an array in it: members {_members(target)}")


def _open_ome(root: str, comp: str | None, group_dir: str, fmt: int, raw: str,
              level: int) -> ArraySource:
    ome, version = ngff_metadata(_group_attrs(group_dir, fmt))
    ms = ome["multiscales"][0]
    datasets = ms.get("datasets") or []
    if not datasets:
        raise InputError(f"OME-Zarr image {raw!r} has no datasets in its multiscales metadata")
    rel = [str(d.get("path", "")).strip("/") for d in datasets]
    level_paths = tuple(f"{comp}/{r}" if comp else r for r in rel)
    arrays = []
    for lp in level_paths:
        try:
            arrays.append(_open_zarr_array(_join(root, lp)))
        except Exception as exc:
            raise InputError(f"OME-Zarr image {raw!r}: dataset {lp!r} cannot be opened "
                             f"({type(exc).__name__}: {_one_line(exc)})") from exc
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
        path=root, kind="ome-zarr", shape=levels[lv], dtype=np.dtype(arr.dtype),
        chunks=tuple(int(c) for c in arr.chunks), channel_axis=ca, axes=axes, scale=scale,
        levels=levels, level=lv, component=comp, ngff_version=version,
        zarr_format=int(arr.metadata.zarr_format), axis_names=names, shards=_shards(arr),
        level_paths=level_paths, _stamp=stamp)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _ome_tiff_scale(tf, axes: str, shape0: tuple, shape: tuple) -> list[float] | None:
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
        base = float(sizes[ax]) if ax in sizes and sizes[ax] else 1.0
        scale.append(base * (n0 / n if ax in "xyz" and n else 1.0))
    return scale


def _open_tiff(p: str, raw: str, level: int, component: str | None) -> ArraySource:
    import tifffile
    try:
        tf = tifffile.TiffFile(p)
    except Exception as exc:
        lower = p.lower()
        what = "a TIFF file that tifffile cannot read" if lower.endswith(_TIFF_SUFFIXES) \
            else "not a TIFF file (nor a zarr store)"
        raise InputError(f"input {raw!r} is {what} ({_one_line(exc)}); expected "
                         f"{SUPPORTED_INPUTS}") from exc
    try:
        try:
            series_i = int(component) if component not in (None, "") else 0
            series = tf.series[series_i]
        except (ValueError, IndexError):
            raise InputError(f"component={component!r} is not a series of TIFF {raw!r}; it "
                             f"has series 0..{len(tf.series) - 1}") from None
        levels = [tuple(int(s) for s in lv.shape) for lv in series.levels]
        lv = _check_level(level, levels, raw)
        store = series.aszarr(level=lv)
        import zarr
        arr = zarr.open(store, mode="r")
        if not hasattr(arr, "chunks"):
            raise InputError(f"TIFF {raw!r} series {series_i} level {lv} did not open as "
                             f"one array")
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
        path=p, kind="tiff", shape=levels[lv], dtype=dtype, chunks=chunks, channel_axis=ca,
        scale=scale, levels=levels, level=lv,
        component=str(series_i) if component not in (None, "") else None,
        ngff_version=None, axis_names=names,
        level_paths=(), ome_tiff=kind_ome, _stamp=(st.st_mtime_ns, st.st_size))


# --------------------------------------------------------------------------------------
# describe
# --------------------------------------------------------------------------------------
def describe(src: ArraySource) -> str:
    """A one-line human description of an :class:`ArraySource`.

    Examples
    --------
    >>> import tempfile, os, zarr
    >>> p = os.path.join(tempfile.mkdtemp(), "a.zarr")
    >>> _ = zarr.create_array(p, shape=(64, 64), chunks=(32, 32), dtype="u2")
    >>> describe(open_path(p))  # doctest: +ELLIPSIS
    'zarr v3 array .../a.zarr, shape (64, 64) uint16, chunks (32, 32)'
    """
    if src.kind == "ome-zarr":
        what = f"OME-Zarr {src.ngff_version or '?'} image"
    elif src.kind == "tiff":
        what = "OME-TIFF" if src.ome_tiff else "TIFF"
    else:
        what = f"zarr v{src.zarr_format} array"
    where = src.path + (f" component {src.component!r}" if src.component else "")
    parts = [f"{what} {where}"]
    if len(src.levels) > 1 or src.kind == "ome-zarr":
        parts[0] += f" level {src.level} of {len(src.levels)}"
    names = ""
    if src.axis_names:
        names = ("".join(src.axis_names) if all(len(n) == 1 for n in src.axis_names)
                 else ",".join(src.axis_names)) + " "
    desc = f"{parts[0]}, shape {tuple(src.shape)} {names}{src.dtype}, chunks {tuple(src.chunks)}"
    if src.shards:
        desc += f", shards {tuple(src.shards)}"
    if src.channel_axis is not None:
        desc += f", channel axis {src.channel_axis}"
    if src.scale is not None:
        desc += f", scale {tuple(round(s, 6) for s in src.scale)}"
    return desc

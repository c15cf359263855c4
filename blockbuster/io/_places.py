"""Places: which paths blockbuster accepts, and which it may write to or delete.

One set of rules, used wherever an entry point (API, CLI, deployments, watch) takes a
path and wherever blockbuster writes or deletes (output creation, staging preparation):

- :func:`parse_location`: a ``write_to`` / ``staging`` / ``image`` value becomes a local
  absolute :class:`~pathlib.Path`, an object store URL (``s3://``, ``gs://``, ``az://``,
  ``http(s)://``; kept as a string, opened by :mod:`._stores`), or is refused: other
  URL schemes, the fsspec chaining syntax ``::`` (zarr would read
  ``a/labels/x::memory`` as a chained URL), NUL bytes, names longer than the filesystem
  allows, wrong types. The one decision "local path or URL" is made here and nowhere else.
- :func:`check_apart`: an output or staging path is not the input, does not contain it
  and is not inside it (an OME-Zarr image's ``labels/<name>`` aside, for the output).
- :func:`output_state` / :func:`check_replaceable`: blockbuster replaces only what it
  created, recognised by its own markers: the output array's completion record
  (attribute ``blockbuster``), the staging's manifest (``staging.json`` with its
  ``generation``); never a file, a folder that is not a zarr store, or a zarr store
  without the marker. A complete output of another run is replaced only with
  ``overwrite=True``.
- :func:`under_roots`: deployments read and write only under their data roots.
- :func:`member_path`: paths read from inside a store (NGFF ``datasets[].path``,
  OME-TIFF file names) stay inside the store.
- :func:`local_store`: local zarr stores are opened by path objects
  (``zarr.storage.LocalStore``), never by strings zarr might re-interpret; URLs by
  zarr's ``ObjectStore`` (:func:`._stores.zarr_store`).

Every refusal happens before anything is touched, and names the parameter, the path,
why, and the fix.

Examples
--------
>>> parse_location("/data/labels.zarr", param="write_to").as_posix()
'/data/labels.zarr'
>>> parse_location("s3://bucket/labels.zarr/", param="write_to")
's3://bucket/labels.zarr'
>>> parse_location("ftp://host/labels.zarr", param="write_to")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
blockbuster.errors.UnsupportedLocationError: write_to='ftp://host/labels.zarr' is a URL (ftp://) of a kind blockbuster does not open; use a local path or one of s3://, ...
>>> parse_location("/data/x.zarr/labels/a::memory", param="write_to")
Traceback (most recent call last):
...
blockbuster.errors.UnsupportedLocationError: write_to='/data/x.zarr/labels/a::memory' contains '::' (fsspec chaining, which zarr would interpret); rename the path without '::'
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from blockbuster.errors import (
    InvalidParameterError,
    OutputExistsError,
    ParameterTypeError,
    PathNotAllowedError,
    UnsupportedLocationError,
)

from ._metadata import _node_type, _read_json
from ._stores import URL_SCHEMES, is_url, join_url, list_prefix, redact, split_url, zarr_store

if TYPE_CHECKING:
    import zarr.storage

__all__ = [
    "parse_location",
    "check_apart",
    "output_state",
    "completion_record",
    "check_replaceable",
    "staging_state",
    "check_staging",
    "under_roots",
    "member_path",
    "local_store",
    "is_within",
    "OUTPUT_MARKER",
    "STAGING_MANIFEST",
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
]

#: The attribute of an output array that marks it as written by blockbuster.
OUTPUT_MARKER = "blockbuster"
#: The manifest file that marks a staging folder as blockbuster's.
STAGING_MANIFEST = "staging.json"
#: Longest name of one path component, and of a whole path (Linux NAME_MAX, PATH_MAX).
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096

# a URL scheme: two or more characters (a Windows drive letter is one) then ':/'
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):/")


def parse_location(value: object, *, param: str) -> Path:
    """``value`` as a local absolute path, or a clear refusal naming ``param``.

    ``file://`` is stripped; ``~`` is expanded; relative paths are made absolute (not
    resolved: symlinks are resolved by the checks that compare paths).

    Raises
    ------
    ParameterTypeError
        ``value`` is not a ``str`` or ``os.PathLike`` of ``str`` (a ``TypeError``).
    UnsupportedLocationError
        A URL (``s3://``, ``gs://``, ``http://``...) or fsspec ``::`` chaining.
    InvalidParameterError
        Empty, a NUL byte, or a name longer than the filesystem allows.

    Examples
    --------
    >>> parse_location("file:///tmp/a.zarr", param="image").as_posix()
    '/tmp/a.zarr'
    >>> parse_location(3, param="staging")
    Traceback (most recent call last):
    ...
    blockbuster.errors.ParameterTypeError: staging=3 must be a path (str or os.PathLike), not int
    """
    if not isinstance(value, (str, os.PathLike)):
        raise ParameterTypeError(
            f"{param}={value!r} must be a path (str or os.PathLike), not {type(value).__name__}"
        )
    raw = os.fspath(value)
    if not isinstance(raw, str):
        raise ParameterTypeError(f"{param}={value!r} must be a str path, not bytes")
    if not raw.strip():
        raise InvalidParameterError(f"{param}={value!r} is empty; give a path")
    if "\x00" in raw:
        raise InvalidParameterError(f"{param}={raw!r} contains a NUL byte; give a valid path")
    if raw.startswith("file://"):
        raw = raw[len("file://") :]
    m = _SCHEME.match(raw)
    if m:
        if is_url(raw) and m.group(1).lower() in URL_SCHEMES:
            # an object store URL: kept as it is (io/_stores.py opens it); never a
            # local path
            if "::" in raw:
                raise UnsupportedLocationError(
                    f"{param}={redact(raw)!r} contains '::' (fsspec chaining); give a plain URL"
                )
            split_url(raw)  # names a bucket
            return raw.rstrip("/")  # type: ignore[return-value]
        raise UnsupportedLocationError(
            f"{param}={redact(raw)!r} is a URL ({m.group(1)}://) of a kind blockbuster "
            f"does not open; use a local path or one of "
            f"{', '.join(s + '://' for s in URL_SCHEMES)}"
        )
    if "::" in raw:
        raise UnsupportedLocationError(
            f"{param}={raw!r} contains '::' (fsspec chaining, which zarr would interpret); "
            "rename the path without '::'"
        )
    path = os.path.abspath(os.path.expanduser(raw))
    encoded = os.fsencode(path)
    if len(encoded) > MAX_PATH_BYTES or any(
        len(part) > MAX_NAME_BYTES for part in encoded.split(b"/")
    ):
        raise InvalidParameterError(
            f"{param}={raw[:80]!r}... is longer than the filesystem allows ({MAX_NAME_BYTES} "
            f"bytes a name, {MAX_PATH_BYTES} a path); give a shorter path"
        )
    return Path(path)


def is_within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (both taken as given).

    >>> is_within("/a/b/c", "/a/b"), is_within("/a/bc", "/a/b"), is_within("/a", "/a")
    (True, False, True)
    """
    p, f = os.fspath(path), os.fspath(folder).rstrip(os.sep) or os.sep
    return p == f or p.startswith(f if f.endswith(os.sep) else f + os.sep)


def _real(path: str | os.PathLike) -> str:
    return os.path.realpath(os.fspath(path))


def check_apart(
    path: str | os.PathLike,
    image: str | os.PathLike,
    *,
    param: str,
    labels_of: str | os.PathLike | None = None,
) -> None:
    """Refuse ``path`` when it is the input ``image``, contains it, or lies inside it.

    ``labels_of``: the OME-Zarr image group of the input; ``<labels_of>/labels/<name>``
    (one non-hidden name, exactly) is then allowed inside the input. Symlinks are
    resolved on both sides.

    Examples
    --------
    >>> check_apart("/d/in.zarr/labels/cells", "/d/in.zarr", param="write_to",
    ...             labels_of="/d/in.zarr")
    >>> check_apart("/d", "/d/in.zarr", param="write_to")
    Traceback (most recent call last):
    ...
    blockbuster.errors.InvalidParameterError: write_to='/d' contains the input '/d/in.zarr'; writing there would replace the input: choose another path
    """
    p, img = _real(path), _real(image)
    if p == img:
        raise InvalidParameterError(
            f"{param}={os.fspath(path)!r} is the input {img!r}; it would replace the input "
            "image: choose another path"
        )
    if is_within(img, p):
        raise InvalidParameterError(
            f"{param}={os.fspath(path)!r} contains the input {img!r}; writing there would "
            "replace the input: choose another path"
        )
    if is_within(p, img):
        if labels_of is not None:
            labels = os.path.join(_real(labels_of), "labels")
            name = os.path.basename(p)
            if os.path.dirname(p) == labels and name and not name.startswith("."):
                return
        raise InvalidParameterError(
            f"{param}={os.fspath(path)!r} is inside the input image {img!r}; only an OME-Zarr "
            "image's 'labels/<name>' may be written into it: choose another path"
        )


StateName = Literal["absent", "incomplete", "complete", "foreign-zarr", "foreign"]


def _marker(path: str) -> dict | None | Literal[False]:
    """The output marker of the zarr array at ``path`` (or at ``path/0``, an NGFF label
    image): the record dict, False when the node has none, None when no zarr node."""
    kind, fmt = _node_type(path)
    if kind is None:
        return None
    if kind == "group":
        sub = os.path.join(path, "0")
        k0, f0 = _node_type(sub)
        if k0 != "array":
            return False
        path, fmt = sub, f0
    if fmt == 3:
        attrs = (_read_json(os.path.join(path, "zarr.json")) or {}).get("attributes") or {}
    else:
        attrs = _read_json(os.path.join(path, ".zattrs")) or {}
    rec = attrs.get(OUTPUT_MARKER) if isinstance(attrs, dict) else None
    if isinstance(rec, dict) and isinstance(rec.get("complete"), bool):
        return rec
    return False


def _presence(p: str) -> Literal["absent", "foreign", "present"]:
    """``absent`` (nothing, an empty folder or URL prefix), ``foreign`` (a file, a link,
    an unreadable folder) or ``present`` (a folder or URL prefix with something in it)."""
    if is_url(p):
        prefixes, objects = list_prefix(p)
        return "present" if prefixes or objects else "absent"
    if not os.path.lexists(p):
        return "absent"
    if os.path.islink(p) or not os.path.isdir(p):
        return "foreign"
    try:
        return "present" if os.listdir(p) else "absent"
    except OSError:
        return "foreign"


def output_state(path: str | os.PathLike) -> StateName:
    """What is at an output path.

    ``absent`` (nothing, or an empty folder), ``incomplete`` / ``complete`` (an output
    blockbuster wrote, by its completion record), ``foreign-zarr`` (a zarr store without
    that record) or ``foreign`` (a file, a link, a folder that is not a zarr store).

    >>> import tempfile
    >>> output_state(tempfile.mkdtemp()), output_state(__file__)
    ('absent', 'foreign')
    """
    p = os.fspath(path)
    there = _presence(p)
    if there != "present":
        return there
    rec = _marker(p)
    if rec is None:
        return "foreign"
    if rec is False:
        return "foreign-zarr"
    return "complete" if rec["complete"] else "incomplete"


def completion_record(path: str | os.PathLike) -> dict | None:
    """The completion record of a complete blockbuster output at ``path``, else None."""
    p = os.fspath(path)
    rec = _marker(p) if is_url(p) or os.path.isdir(p) else None
    return rec if isinstance(rec, dict) and rec.get("complete") else None


def check_replaceable(
    path: str | os.PathLike, *, overwrite: bool, param: str = "write_to"
) -> StateName:
    """The state of an output path, when blockbuster may (re)create the output there.

    Allowed: nothing there, an unfinished blockbuster output (a crashed or stopped run's),
    and a complete blockbuster output with ``overwrite=True``. Everything else raises
    :class:`~blockbuster.errors.OutputExistsError` (a ``FileExistsError``).

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp(); open(os.path.join(d, "notes.txt"), "w").close()
    >>> check_replaceable(d, overwrite=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    blockbuster.errors.OutputExistsError: write_to='...' is a folder that is not a zarr store; blockbuster never replaces it (overwrite=True neither): choose another path
    """
    p = os.fspath(path)
    state = output_state(p)
    if state == "foreign":
        what = (
            "a symbolic link"
            if os.path.islink(p)
            else ("a folder that is not a zarr store" if os.path.isdir(p) else "a file")
        )
        raise OutputExistsError(
            f"{param}={p!r} is {what}; blockbuster never replaces it (overwrite=True "
            "neither): choose another path"
        )
    if state == "foreign-zarr":
        raise OutputExistsError(
            f"{param}={p!r} is a zarr store that blockbuster did not write (no "
            f"'{OUTPUT_MARKER}' completion record); it is never replaced (overwrite=True "
            "neither): choose another path, or remove it yourself"
        )
    if state == "complete" and not overwrite:
        raise OutputExistsError(
            f"{param}={p!r} holds a complete output of another run; pass overwrite=True "
            "(command line: --overwrite) to replace it, or choose another path"
        )
    return state


def staging_state(path: str | os.PathLike) -> Literal["absent", "ours", "foreign"]:
    """``absent`` (nothing or an empty folder), ``ours`` (a folder with blockbuster's
    staging manifest) or ``foreign`` (anything else: never deleted).

    >>> import tempfile
    >>> staging_state(tempfile.mkdtemp())
    'absent'
    """
    p = os.fspath(path)
    there = _presence(p)
    if there != "present":
        return there
    info = _read_json(os.path.join(p, STAGING_MANIFEST))
    if isinstance(info, dict) and "generation" in info and "format" in info:
        return "ours"
    return "foreign"


def check_staging(path: str | os.PathLike, *, param: str = "staging") -> str:
    """Refuse a staging path holding something that is not a blockbuster staging."""
    p = os.fspath(path)
    state = staging_state(p)
    if state == "foreign":
        raise OutputExistsError(
            f"{param}={p!r} exists and is not a blockbuster staging folder (no "
            f"{STAGING_MANIFEST} manifest); it is never deleted: choose another staging "
            "path (or an empty or absent folder)"
        )
    return state


def under_roots(
    path: str | os.PathLike,
    roots: Iterable[str],
    *,
    param: str,
    setting: str = "BLOCKBUSTER_DATA_ROOTS",
) -> str:
    """``path`` resolved (symlinks, ``..``) when it lies under one of ``roots``.

    >>> under_roots("/data/a/../b.zarr", ["/data"], param="image")
    '/data/b.zarr'
    """
    roots = list(roots)
    raw = os.fspath(path)
    if not roots:
        raise PathNotAllowedError(
            f"{param} {raw!r} refused: no data roots are configured; set {setting} (folders "
            f"separated by {os.pathsep!r}) in the environment of the process that runs "
            "the flows"
        )
    real = _real(raw)
    for root in roots:
        if not is_url(root) and is_within(real, _real(root)):  # URL roots: under_url_roots
            return real
    where = f" (resolves to {real!r})" if real != os.path.normpath(raw) else ""
    raise PathNotAllowedError(
        f"{param} {raw!r}{where} is outside the data roots ({os.pathsep.join(roots)}); "
        f"only paths under {setting} may be read or written"
    )


def under_url_roots(
    url: str, roots: Iterable[str], *, param: str, setting: str = "BLOCKBUSTER_DATA_ROOTS"
) -> str:
    """``url`` normalized, when it lies under one of the URL prefixes in ``roots`` (the
    same scheme and bucket, and the root's key segments first): the rule of
    :func:`under_roots` for object stores. Keys with ``.`` or ``..`` segments, empty
    segments (``//``), ``?``, ``#`` or ``%`` are refused (a store takes them literally,
    a reader may not).

    >>> under_url_roots("s3://lab/raw/a.zarr/", ["s3://lab/raw"], param="image")
    's3://lab/raw/a.zarr'
    >>> under_url_roots("s3://lab/rawdata/a.zarr", ["s3://lab/raw"], param="image")
    Traceback (most recent call last):
    ...
    blockbuster.errors.PathNotAllowedError: image 's3://lab/rawdata/a.zarr' is outside the data roots (s3://lab/raw); only paths under BLOCKBUSTER_DATA_ROOTS may be read or written
    """
    url_roots = [r for r in roots if is_url(r)]
    scheme, bucket, prefix = split_url(url)
    keys = url.split("://", 1)[1].rstrip("/").split("/")[1:]  # as written, '//' kept
    if any(k in ("", ".", "..") for k in keys) or any(c in url for c in "?#%"):
        raise PathNotAllowedError(
            f"{param} {redact(url)!r} has an empty, '.' or '..' key segment or a '?', '#' "
            "or '%': give the object's plain key"
        )
    norm = join_url(f"{scheme}://{bucket}", prefix)
    for root in url_roots:
        r_scheme, r_bucket, r_prefix = split_url(root)
        r_keys = r_prefix.split("/") if r_prefix else []
        if (r_scheme, r_bucket) == (scheme, bucket) and keys[: len(r_keys)] == r_keys:
            return norm
    shown = os.pathsep.join(roots) if roots else "none configured"
    raise PathNotAllowedError(
        f"{param} {redact(url)!r} is outside the data roots ({shown}); only paths under "
        f"{setting} may be read or written"
    )


def member_path(store: str | os.PathLike, member: str, *, what: str) -> str:
    """The path of ``member`` (a path written inside a store's metadata) under ``store``,
    refused when it leaves the store (``..``, absolute paths, links out, URLs, ``::``).

    >>> member_path("/d/img.zarr", "0", what="dataset path")
    '/d/img.zarr/0'
    >>> member_path("s3://b/img.zarr", "0", what="dataset path")
    's3://b/img.zarr/0'
    >>> member_path("/d/img.zarr", "../../other.zarr", what="dataset path")
    Traceback (most recent call last):
    ...
    blockbuster.errors.PathNotAllowedError: dataset path '../../other.zarr' in '/d/img.zarr' leaves the store; paths inside a store must stay inside it
    """
    store = os.fspath(store)
    m = str(member)
    bad = (
        "\x00" in m
        or "::" in m
        or _SCHEME.match(m) is not None
        or os.path.isabs(m)
        or m.startswith("\\")
    )
    if is_url(store):  # keys in an object store: no '..' or '.' to resolve, no links
        parts = [s for s in m.split("/") if s]
        if bad or any(p in (".", "..") for p in parts):
            raise PathNotAllowedError(
                f"{what} {m!r} in {redact(store)!r} leaves the store; paths inside a store "
                "must stay inside it"
            )
        return "/".join([store.rstrip("/"), *parts])
    joined = os.path.normpath(os.path.join(store, *[s for s in m.split("/") if s]))
    if bad or not is_within(joined, os.path.normpath(store)):
        raise PathNotAllowedError(
            f"{what} {m!r} in {store!r} leaves the store; paths inside a store must stay inside it"
        )
    if os.path.lexists(joined) and not is_within(_real(joined), _real(store)):
        raise PathNotAllowedError(
            f"{what} {m!r} in {store!r} is a link to {_real(joined)!r}, outside the store; "
            "paths inside a store must stay inside it"
        )
    return joined


def local_store(path: str | os.PathLike, *, read_only: bool = False) -> zarr.storage.LocalStore:
    """A ``zarr.storage.LocalStore`` at ``path`` (a path object: never re-interpreted as
    a URL or an fsspec chain by zarr)."""
    from zarr.storage import LocalStore

    if is_url(os.fspath(path)):  # an object store (io/_stores.py)
        return zarr_store(os.fspath(path), read_only=read_only)
    return LocalStore(Path(os.fspath(path)), read_only=read_only)

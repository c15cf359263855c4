"""Paths of the ``segment`` flow: data roots, default outputs, output state, failure records.

Pure path and file bookkeeping (no Prefect): which paths a deployment may touch
(:func:`check_allowed_path`), where labels go by default (:func:`default_output`), what is
already at an output (:func:`output_state`), the hidden lock and failure files next to
it, and the output-versus-input check. Re-exported by :mod:`blockbuster.deploy`.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from typing import Any, Literal

from blockbuster.errors import InvalidParameterError
from blockbuster.io import (
    check_apart,
    hidden_path,
    is_url,
    join_url,
    lock_path,
    parse_location,
    under_roots,
    under_url_roots,
)
from blockbuster.io import output_state as _io_output_state

__all__ = [
    "check_allowed_path",
    "default_output",
    "path_stem",
    "output_state",
    "lock_path",
    "failure_record",
    "MAX_ATTEMPTS",
    "LABELS_SUFFIX",
]

log = logging.getLogger("blockbuster")

#: After this many failed runs on one output, the watcher stops retrying it.
MAX_ATTEMPTS = 3

_TIFF_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".btf", ".tf8", ".tf2")
_ZARR_SUFFIXES = (".ome.zarr", ".zarr")
LABELS_SUFFIX = ".labels.zarr"


# ---------------------------------------------------------------------------------------
# paths: data roots, default outputs, output state
# ---------------------------------------------------------------------------------------
def check_allowed_path(
    path: Any,
    roots: tuple[str, ...] | list[str],
    *,
    what: str,
    setting: str = "BLOCKBUSTER_DATA_ROOTS",
) -> str:
    """``path`` resolved (symlinks, ``..``), when it lies under one of ``roots``; a URL
    (``s3://bucket/key``) normalized, when it lies under one of the URL prefixes among
    ``roots`` (:func:`blockbuster.io.under_url_roots`).

    Raises
    ------
    InvalidParameterError
        ``path`` is not a non-empty absolute path.
    PathNotAllowedError
        No roots are configured, or ``path`` resolves outside all of them.

    Examples
    --------
    >>> check_allowed_path("/data/a/../b.zarr", ["/data"], what="image")
    '/data/b.zarr'
    >>> check_allowed_path("s3://lab/raw/b.zarr", ["/data", "s3://lab/raw"], what="image")
    's3://lab/raw/b.zarr'
    >>> check_allowed_path("/etc/passwd", ["/data"], what="image")
    Traceback (most recent call last):
    ...
    blockbuster.errors.PathNotAllowedError: image '/etc/passwd' is outside the data roots (/data); only paths under BLOCKBUSTER_DATA_ROOTS may be read or written
    """
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path).strip():
        raise InvalidParameterError(f"{what}={path!r} must be an absolute path")
    raw = parse_location(os.fspath(path).strip(), param=what)  # URLs, '::', NUL, long names
    if is_url(os.fspath(raw)):  # an object in a store: under a URL prefix of the roots
        return under_url_roots(os.fspath(raw), roots, param=what, setting=setting)
    given = os.fspath(path).strip()
    given = given[len("file://") :] if given.startswith("file://") else given
    if not os.path.isabs(given):
        raise InvalidParameterError(
            f"{what}={given!r} must be an absolute path (relative paths and '~' are not "
            "resolved for deployment runs)"
        )
    return under_roots(raw, roots, param=what, setting=setting)


def path_stem(path: str) -> str:
    """The name of ``path`` without its image suffix (``a.ome.zarr`` -> ``a``)."""
    name = os.path.basename(os.path.normpath(path))
    low = name.lower()
    for suf in _ZARR_SUFFIXES + _TIFF_SUFFIXES:
        if low.endswith(suf) and len(name) > len(suf):
            return name[: -len(suf)]
    return name


def default_output(
    image_path: str,
    *,
    kind: str | None,
    component: str | None = None,
    output_dir: str | None = None,
    label_name: str = "segmentation",
    base_folder: str | None = None,
) -> str:
    """Where labels of ``image_path`` go when no output is given.

    Without ``output_dir``: an OME-Zarr image gets the NGFF label image
    ``<image>/labels/<label_name>``; anything else a sibling ``<stem>.labels.zarr``.
    With ``output_dir``: ``<output_dir>/<folders below base_folder>/<name>.labels.zarr``.
    ``<name>`` is the input's whole file name (``a.tif`` -> ``a.tif.labels.zarr``), so
    no two inputs of one folder (``a.tif``, ``a.zarr``) share an output.

    Examples
    --------
    >>> default_output("/d/a.ome.zarr", kind="ome-zarr")
    '/d/a.ome.zarr/labels/segmentation'
    >>> default_output("/d/x/b.tif", kind="tiff")
    '/d/x/b.tif.labels.zarr'
    >>> default_output("/d/x/b.tif", kind="tiff", output_dir="/out", base_folder="/d")
    '/out/x/b.tif.labels.zarr'
    >>> default_output("s3://lab/raw/c.zarr", kind="zarr")
    's3://lab/raw/c.zarr.labels.zarr'
    """
    if is_url(image_path):  # an object store: the same places, by key
        image_path = image_path.rstrip("/")
        if output_dir is not None:
            return join_url(output_dir, image_path.rsplit("/", 1)[1] + LABELS_SUFFIX)
        if kind == "ome-zarr":
            return join_url(join_url(image_path, component), f"labels/{label_name}")
        return image_path + LABELS_SUFFIX
    image_path = os.path.normpath(image_path)
    if output_dir is None:
        if kind == "ome-zarr":
            parts = [image_path] + ([component.strip("/")] if component else [])
            return os.path.join(*parts, "labels", label_name)
        return os.path.join(os.path.dirname(image_path), _full_name(image_path) + LABELS_SUFFIX)
    sub = ""
    if base_folder is not None:
        rel = os.path.relpath(os.path.dirname(image_path), os.path.normpath(base_folder))
        if not rel.startswith(os.pardir):
            sub = "" if rel == os.curdir else rel
    return os.path.join(output_dir, sub, _full_name(image_path) + LABELS_SUFFIX)


def _full_name(path: str) -> str:
    return os.path.basename(os.path.normpath(path))


def _failure_path(output: str) -> str:
    return hidden_path(output, ".blockbuster-failed")


def failure_record(output: str) -> dict[str, Any] | None:
    """``{"attempts": n, "error": "...", ...}`` of failed runs on ``output``, or None."""
    try:
        with open(_failure_path(output)) as f:
            rec = json.load(f)
        return rec if isinstance(rec, dict) else None
    except (OSError, ValueError):
        return None


def _record_failure(output: str, error: str) -> None:
    rec = failure_record(output) or {"attempts": 0}
    rec.update(
        {
            "attempts": int(rec.get("attempts", 0)) + 1,
            "error": error[:2000],
            "time": _now(),
            "path": _failure_path(output),
        }
    )
    try:
        tmp = _failure_path(output) + f".{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(rec, f)
        os.replace(tmp, _failure_path(output))
    except OSError:  # pragma: no cover - best effort bookkeeping
        log.debug("could not record the failure for %s", output, exc_info=True)


def _clear_failures(output: str) -> None:
    try:
        os.remove(_failure_path(output))
    except OSError:
        pass


OutputStateName = Literal["absent", "complete", "incomplete", "foreign"]


def output_state(output: str) -> OutputStateName:
    """What is at ``output``: nothing, a complete or an unfinished blockbuster output, or
    something else ("foreign": never replaced). See :func:`blockbuster.io.output_state`."""
    state = _io_output_state(output)
    return "foreign" if state == "foreign-zarr" else state


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _check_output_vs_input(out: str, stored) -> None:
    group = None
    if stored.kind == "ome-zarr":
        group = (
            os.path.join(stored.path, stored.component.strip("/"))
            if stored.component
            else stored.path
        )
    check_apart(out, stored.path, param="output", labels_of=group)

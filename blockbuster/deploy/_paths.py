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

from blockbuster.errors import InputError, InvalidParameterError, PathNotAllowedError

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
def _strip_file_url(path: str, what: str) -> str:
    if path.startswith("file://"):
        path = path[len("file://") :]
    elif "://" in path:
        raise InputError(f"{what} {path!r} is a URL; give a local absolute path")
    return path


def check_allowed_path(
    path: Any,
    roots: tuple[str, ...] | list[str],
    *,
    what: str,
    setting: str = "BLOCKBUSTER_DATA_ROOTS",
) -> str:
    """``path`` resolved (symlinks, ``..``), when it lies under one of ``roots``.

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
    >>> check_allowed_path("/etc/passwd", ["/data"], what="image")
    Traceback (most recent call last):
    ...
    blockbuster.errors.PathNotAllowedError: image '/etc/passwd' is outside the data roots (/data); only paths under BLOCKBUSTER_DATA_ROOTS may be read or written
    """
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path).strip():
        raise InvalidParameterError(f"{what}={path!r} must be an absolute path")
    raw = _strip_file_url(os.fspath(path).strip(), what)
    if "\x00" in raw:
        raise InvalidParameterError(f"{what}={raw!r} contains a NUL byte")
    if not os.path.isabs(raw):
        raise InvalidParameterError(
            f"{what}={raw!r} must be an absolute path (relative paths and '~' are not "
            "resolved for deployment runs)"
        )
    if not roots:
        raise PathNotAllowedError(
            f"{what} {raw!r} refused: no data roots are configured; set {setting} (folders "
            f"separated by {os.pathsep!r}) in the environment of the process that runs "
            "the flows"
        )
    real = os.path.realpath(raw)
    for root in roots:
        r = os.path.realpath(root)
        if real == r or real.startswith(r.rstrip(os.sep) + os.sep):
            return real
    where = f" (resolves to {real!r})" if real != os.path.normpath(raw) else ""
    raise PathNotAllowedError(
        f"{what} {raw!r}{where} is outside the data roots ({os.pathsep.join(roots)}); "
        f"only paths under {setting} may be read or written"
    )


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
    With ``output_dir``: ``<output_dir>/<folders below base_folder>/<stem>.labels.zarr``.

    Examples
    --------
    >>> default_output("/d/a.ome.zarr", kind="ome-zarr")
    '/d/a.ome.zarr/labels/segmentation'
    >>> default_output("/d/x/b.tif", kind="tiff")
    '/d/x/b.labels.zarr'
    >>> default_output("/d/x/b.tif", kind="tiff", output_dir="/out", base_folder="/d")
    '/out/x/b.labels.zarr'
    """
    image_path = os.path.normpath(image_path)
    if output_dir is None:
        if kind == "ome-zarr":
            parts = [image_path] + ([component.strip("/")] if component else [])
            return os.path.join(*parts, "labels", label_name)
        return os.path.join(os.path.dirname(image_path), path_stem(image_path) + LABELS_SUFFIX)
    sub = ""
    if base_folder is not None:
        rel = os.path.relpath(os.path.dirname(image_path), os.path.normpath(base_folder))
        if not rel.startswith(os.pardir):
            sub = "" if rel == os.curdir else rel
    return os.path.join(output_dir, sub, path_stem(image_path) + LABELS_SUFFIX)


def _store_split(path: str) -> tuple[str, str]:
    """(folder outside any zarr store, name) for hidden files that belong to ``path``."""
    path = os.path.abspath(path)
    parts = path.split(os.sep)
    for i, p in enumerate(parts[:-1]):
        if p.lower().endswith(".zarr") and i > 0:
            return os.sep.join(parts[:i]) or os.sep, "-".join(parts[i:])
    return os.path.dirname(path), os.path.basename(path)


def lock_path(output: str) -> str:
    """The lock file of an output: hidden, next to it (outside any zarr store)."""
    parent, name = _store_split(output)
    return os.path.join(parent, f".{name}.blockbuster-lock")


def _failure_path(output: str) -> str:
    parent, name = _store_split(output)
    return os.path.join(parent, f".{name}.blockbuster-failed")


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
    something else ("foreign": never replaced)."""
    if not os.path.lexists(output):
        return "absent"
    if os.path.isdir(output) and not os.path.islink(output) and not os.listdir(output):
        return "absent"
    from blockbuster.io import ATTR, OutputTarget

    try:
        arr = OutputTarget(output).open()
        rec = arr.attrs.get(ATTR)
    except Exception:
        return "foreign"
    if isinstance(rec, dict) and "complete" in rec:
        return "complete" if rec.get("complete") else "incomplete"
    return "foreign"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _inside(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip(os.sep) + os.sep)


def _check_output_vs_input(out: str, stored) -> None:
    img = stored.path
    if out == img or _inside(img, out):
        raise InvalidParameterError(
            f"output {out!r} would replace the input image {img!r}; choose another path"
        )
    if _inside(out, img):
        group = os.path.join(img, stored.component.strip("/")) if stored.component else img
        ok = stored.kind == "ome-zarr" and _inside(out, os.path.join(group, "labels"))
        if not ok:
            raise InvalidParameterError(
                f"output {out!r} is inside the input image {img!r}; only an OME-Zarr image's "
                f"'labels/<name>' may be written into it"
            )

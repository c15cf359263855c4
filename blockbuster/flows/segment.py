"""The ``segment`` flow: what the Prefect UI, the API, an event or a schedule starts.

Its parameters are typed, titled and described pydantic models, so the Prefect UI renders
a form with dropdowns and defaults, and the server refuses (at flow-run creation, when the
deployment enforces its parameter schema) a segmenter name that is not registered.

Everything is validated before any work starts (:func:`prepare_segment`):

- the segmenter is a name registered under the ``blockbuster.segmenters`` entry-point
  group, built with its options (never an importable path: no parameter can name code);
- the input and output resolve (symlinks and ``..`` resolved) under the data roots of
  the process running the flow (``BLOCKBUSTER_DATA_ROOTS``), else
  :class:`~blockbuster.errors.PathNotAllowedError`;
- the input opens (metadata only), the tiling fits it;
- the output is not the input nor around it, and is either absent or an output that
  blockbuster wrote: a path blockbuster did not write is never replaced.

Then :func:`run_segment` takes the output's lock (:class:`OutputLock`), skips an output
that is already complete (unless ``overwrite``), and runs
:func:`blockbuster.tile_process` (a subflow ``tile-process``).

No CLI import here: the command line builds on this module, not the other way round.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import json
import logging
import os
import socket
import time
from enum import Enum
from typing import Annotated, Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field
from prefect import flow

from ..errors import InputError, InvalidParameterError, PathNotAllowedError
from ..segmenters.registry import (REQUIRED, available_segmenters, get_segmenter,
                                   load_factory, segmenter_options_schema)
from ..settings import Settings, get_settings

__all__ = [
    "SegmenterName", "MergeMode", "SegmenterChoice", "TilingOptions", "SegmentRequest",
    "OutputLock", "segment", "prepare_segment", "run_segment", "check_allowed_path",
    "default_output", "output_state", "lock_path", "failure_record", "MAX_ATTEMPTS",
]

log = logging.getLogger("blockbuster")

#: After this many failed runs on one output, the watcher stops retrying it.
MAX_ATTEMPTS = 3

_TIFF_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".btf", ".tf8", ".tf2")
_ZARR_SUFFIXES = (".ome.zarr", ".zarr")
LABELS_SUFFIX = ".labels.zarr"


# ---------------------------------------------------------------------------------------
# parameter models
# ---------------------------------------------------------------------------------------
def _registered_names() -> list[str]:
    return list(available_segmenters())


#: The registered segmenters, as an enum: a dropdown in the Prefect UI, and a value the
#: server checks against the deployment's parameter schema.
SegmenterName = Enum("SegmenterName", [(n, n) for n in _registered_names()], type=str,
                     module=__name__)
SegmenterName.__doc__ = "A segmenter registered under the blockbuster.segmenters group."


class MergeMode(str, Enum):
    """How labels of neighbouring tiles are merged."""

    auto = "auto"
    touch = "touch"
    overlap = "overlap"


def _options_help() -> str:
    lines = []
    for name in _registered_names():
        try:
            schema = segmenter_options_schema(name)
        except Exception:   # a plugin whose dependencies are missing
            lines.append(f"{name}: (cannot be loaded here)")
            continue
        opts = []
        for k, spec in schema.items():
            default = "required" if spec.default is REQUIRED else f"default {spec.default!r}"
            opts.append(f"{k} ({default})")
        lines.append(f"{name}: " + (", ".join(opts) or "no options"))
    return ("Keyword options of the segmenter, as a JSON object, e.g. "
            '{"threshold": 1200, "min_size": 20}. Unknown options are refused. '
            + "; ".join(lines) + ".")


class SegmenterChoice(BaseModel):
    """A registered segmenter and its options."""

    model_config = ConfigDict(extra="forbid", title="Segmenter and options",
                              use_enum_values=False)

    name: SegmenterName = Field(
        default=SegmenterName("watershed") if "watershed" in SegmenterName.__members__
        else list(SegmenterName)[0],
        title="Segmenter",
        description="Name of a segmenter registered under the 'blockbuster.segmenters' "
                    "entry-point group (threshold: bright connected regions; watershed: "
                    "splits touching round objects such as nuclei; cellpose: the Cellpose "
                    "model, when installed). Only registered names are accepted.")
    options: dict[str, Any] = Field(
        default_factory=dict, title="Segmenter options", description=_options_help())

    def build(self) -> Callable:
        """The segmenter callable (raises SegmenterNotFoundError / InvalidParameterError).

        JSON lists become tuples (per-axis options such as ``footprint`` or
        ``smooth_sigma``)."""
        opts = {k: tuple(v) if isinstance(v, list) else v for k, v in self.options.items()}
        return get_segmenter(_enum_value(self.name), **opts)


class TilingOptions(BaseModel):
    """How the image is cut into tiles and how tiles are merged."""

    model_config = ConfigDict(extra="forbid", title="Tiling options")

    tile_shape: list[int] | None = Field(
        default=None, title="Tile shape",
        description="Tile size per axis, e.g. [1024, 1024] or [64, 512, 512] (a channel "
                    "axis, if listed, takes its whole extent). Empty: the largest tile "
                    "whose working set fits the memory of one worker (automatic).")
    overlap: int | list[int] = Field(
        default=0, title="Overlap (halo)",
        description="Pixels of context given to the segmenter around each tile, one number "
                    "or one per axis; cropped away again. 0 for connected-component "
                    "segmenters, about one object diameter for watershed or Cellpose.")
    merge: MergeMode = Field(
        default=MergeMode.auto, title="Merge",
        description="touch: labels touching across a tile seam become one object. overlap: "
                    "labels are matched inside the shared halo by IoU, so touching cells "
                    "stay apart (needs overlap > 0). auto: touch without overlap, else "
                    "overlap.")
    connectivity: int = Field(
        default=1, ge=1, le=3, title="Connectivity",
        description="Which neighbours touch across a seam: 1 = faces only, up to the number "
                    "of axes = diagonals and corners too.")
    iou_threshold: float = Field(
        default=0.5, gt=0.0, le=1.0, title="IoU threshold",
        description="Overlap merge: the smallest intersection over union at which two "
                    "labels of neighbouring tiles are the same object.")
    skip_empty: bool = Field(
        default=False, title="Skip empty tiles",
        description="Do not run the segmenter on tiles with no pixel above the empty "
                    "threshold (they get no labels and store nothing).")
    empty_threshold: float | None = Field(
        default=None, title="Empty threshold",
        description="With 'Skip empty tiles': a tile is empty when none of its pixels "
                    "exceeds this value (image units). Empty: 0.")
    sequential_labels: bool = Field(
        default=False, title="Sequential labels",
        description="Number the objects exactly 1..N (no gaps) in the output.")
    use_gpu: bool = Field(
        default=False, title="Use GPUs",
        description="Run one worker per GPU and size tiles to GPU memory (for GPU "
                    "segmenters such as Cellpose).")

    def tile_process_kwargs(self) -> dict[str, Any]:
        return {
            "tile_shape": tuple(self.tile_shape) if self.tile_shape else "auto",
            "overlap": tuple(self.overlap) if isinstance(self.overlap, list) else self.overlap,
            "merge": _enum_value(self.merge), "connectivity": self.connectivity,
            "iou_threshold": self.iou_threshold, "skip_empty": self.skip_empty,
            "empty_threshold": self.empty_threshold,
            "sequential_labels": self.sequential_labels, "use_gpu": self.use_gpu,
        }


def _enum_value(v: Any) -> Any:
    return v.value if isinstance(v, Enum) else v


# ---------------------------------------------------------------------------------------
# paths: data roots, default outputs, output state
# ---------------------------------------------------------------------------------------
def _strip_file_url(path: str, what: str) -> str:
    if path.startswith("file://"):
        path = path[len("file://"):]
    elif "://" in path:
        raise InputError(f"{what} {path!r} is a URL; give a local absolute path")
    return path


def check_allowed_path(path: Any, roots: tuple[str, ...] | list[str], *, what: str,
                       setting: str = "BLOCKBUSTER_DATA_ROOTS") -> str:
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
            "resolved for deployment runs)")
    if not roots:
        raise PathNotAllowedError(
            f"{what} {raw!r} refused: no data roots are configured; set {setting} (folders "
            f"separated by {os.pathsep!r}) in the environment of the process that runs "
            "the flows")
    real = os.path.realpath(raw)
    for root in roots:
        r = os.path.realpath(root)
        if real == r or real.startswith(r.rstrip(os.sep) + os.sep):
            return real
    where = f" (resolves to {real!r})" if real != os.path.normpath(raw) else ""
    raise PathNotAllowedError(
        f"{what} {raw!r}{where} is outside the data roots ({os.pathsep.join(roots)}); "
        f"only paths under {setting} may be read or written")


def path_stem(path: str) -> str:
    """The name of ``path`` without its image suffix (``a.ome.zarr`` -> ``a``)."""
    name = os.path.basename(os.path.normpath(path))
    low = name.lower()
    for suf in _ZARR_SUFFIXES + _TIFF_SUFFIXES:
        if low.endswith(suf) and len(name) > len(suf):
            return name[: -len(suf)]
    return name


def default_output(image_path: str, *, kind: str | None, component: str | None = None,
                   output_dir: str | None = None, label_name: str = "segmentation",
                   base_folder: str | None = None) -> str:
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
    rec.update({"attempts": int(rec.get("attempts", 0)) + 1, "error": error[:2000],
                "time": _now(), "path": _failure_path(output)})
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
    from ..core.output import ATTR, OutputTarget
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


# ---------------------------------------------------------------------------------------
# the output lock
# ---------------------------------------------------------------------------------------
class OutputLock:
    """An exclusive, non-blocking lock on one output, held while a run writes it.

    A hidden file next to the output (:func:`lock_path`) locked with ``flock(2)``: the
    kernel releases the lock when its holder exits, also when it crashes or is killed, so
    there is never a stale lock to clean up. The file is removed on release; a process
    that opened the removed file checks, after locking, that the path still names the file
    it locked, and retries otherwise. The file holds who locked it (flow run, host, pid).

    POSIX only. On NFS, Linux emulates ``flock`` with POSIX byte-range locks, which work
    across clients where the mount has locking (NFSv4, or NFSv3 with lockd); with
    ``nolock`` mounts it is local to one machine.

    Examples
    --------
    >>> import tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "labels.zarr")
    >>> a, b = OutputLock(out), OutputLock(out)
    >>> a.acquire({"who": "a"}), b.acquire({"who": "b"}), b.held_by()["who"]
    (True, False, 'a')
    >>> a.release(); b.acquire({"who": "b"})
    True
    >>> b.release()
    """

    def __init__(self, output: str):
        self.output = output
        self.path = lock_path(output)
        self._fd: int | None = None

    def acquire(self, info: dict[str, Any] | None = None) -> bool:
        """Take the lock now, or return False when another holder has it."""
        import fcntl
        if self._fd is not None:
            return True
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o664)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return False
                raise
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)   # the previous holder removed the file while we waited: retry
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"time": _now(), "host": socket.gethostname(),
                                 "pid": os.getpid(), **(info or {})}).encode())
        self._fd = fd
        return True

    def release(self) -> None:
        """Remove the lock file and unlock (idempotent)."""
        import fcntl
        if self._fd is None:
            return
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def held_by(self) -> dict[str, Any] | None:
        """What the current (or, for a file left by a crashed holder, the last) holder
        wrote into the lock file; None when there is no lock file."""
        try:
            with open(self.path) as f:
                data = json.loads(f.read() or "{}")
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None

    def is_held(self) -> bool:
        """Whether some process holds the lock now (a probe; takes nothing)."""
        import fcntl
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)   # closing drops the shared lock
        return False

    def __enter__(self) -> "OutputLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


# ---------------------------------------------------------------------------------------
# validation and execution
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class SegmentRequest:
    """A validated segmentation: everything :func:`run_segment` needs."""

    image: str
    output: str
    fn: Callable
    segmenter: str
    options: dict[str, Any]
    kwargs: dict[str, Any]
    overwrite: bool
    description: str
    dask_address: str | None = None


def _as_segmenter(segmenter: Any) -> SegmenterChoice:
    if isinstance(segmenter, SegmenterChoice):
        return segmenter
    if isinstance(segmenter, str):
        segmenter = {"name": segmenter}
    if isinstance(segmenter, dict):
        name = segmenter.get("name", "watershed")
        load_factory(_enum_value(name))   # SegmenterNotFoundError with the list of names
        opts = segmenter.get("options") or {}
        if not isinstance(opts, dict):
            raise InvalidParameterError(
                f"segmenter options={opts!r} must be a mapping of option names to values")
        extra = set(segmenter) - {"name", "options"}
        if extra:
            raise InvalidParameterError(
                f"segmenter has unknown field(s) {sorted(extra)}; give 'name' and 'options'")
        return SegmenterChoice(name=_enum_value(name), options=opts)
    raise InvalidParameterError(
        f"segmenter={segmenter!r} must name a registered segmenter, e.g. "
        "{'name': 'watershed', 'options': {}}")


def _as_tiling(tiling: Any) -> TilingOptions:
    if tiling is None:
        return TilingOptions()
    if isinstance(tiling, TilingOptions):
        return tiling
    if isinstance(tiling, dict):
        from pydantic import ValidationError
        try:
            return TilingOptions(**tiling)
        except ValidationError as exc:
            raise InvalidParameterError(one_line_validation_error(exc, "tiling")) from None
    raise InvalidParameterError(f"tiling={tiling!r} must be a mapping of tiling options")


def one_line_validation_error(exc: Exception, prefix: str = "") -> str:
    """A pydantic ValidationError as one line: ``field: message; field: message``."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc).splitlines()[0]
    parts = []
    for e in errors():
        loc = ".".join(str(x) for x in e.get("loc", ()))
        loc = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        parts.append(f"{loc}: {e.get('msg')} (got {e.get('input')!r})")
    return "; ".join(parts) or str(exc).splitlines()[0]


def prepare_segment(image: str, segmenter: Any = None, output: str | None = None,
                    tiling: Any = None, *, channel_axis: int | None = None, level: int = 0,
                    overwrite: bool = False, settings: Settings | None = None,
                    enforce_roots: bool = True) -> SegmentRequest:
    """Validate a segmentation request completely, touching nothing.

    Parameters
    ----------
    image, segmenter, output, tiling, channel_axis, level, overwrite
        As the parameters of :func:`segment`.
    settings : Settings, optional
        Default: read from the environment now.
    enforce_roots : bool
        Refuse paths outside ``settings.data_roots`` (deployments: always; the command
        line, run by a user with their own permissions: no).

    Raises
    ------
    PathNotAllowedError, InvalidParameterError, InputError, SegmenterNotFoundError
    """
    from ..core.formats import open_path
    from ..core.plan import normalize_overlap, normalize_tile_shape
    from ..core.sources import open_image

    settings = settings or get_settings()
    if not isinstance(overwrite, bool):
        raise InvalidParameterError(f"overwrite={overwrite!r} must be true or false")
    if level is None or isinstance(level, bool) or not isinstance(level, int) or level < 0:
        raise InvalidParameterError(f"level={level!r} must be an integer >= 0")
    if enforce_roots:
        img = check_allowed_path(image, settings.data_roots, what="image")
    else:
        if not isinstance(image, (str, os.PathLike)) or not os.fspath(image).strip():
            raise InvalidParameterError(f"image={image!r} must be a path")
        img = os.path.realpath(os.path.expanduser(_strip_file_url(os.fspath(image), "image")))
    choice = _as_segmenter(segmenter if segmenter is not None else
                           {"name": settings.segmenter, "options": settings.segmenter_options})
    tiles = _as_tiling(tiling)
    fn = choice.build()
    src = open_image(img, channel_axis=channel_axis, level=level)
    stored = open_path(img, level=level)
    kw = tiles.tile_process_kwargs()
    if kw["tile_shape"] != "auto":
        normalize_tile_shape(kw["tile_shape"], src)
    normalize_overlap(kw["overlap"], src)
    if kw["merge"] == "overlap" and not any(normalize_overlap(kw["overlap"], src)):
        raise InvalidParameterError("merge='overlap' needs overlap > 0; give an overlap "
                                    "(about one object diameter) or use merge='touch'")
    if output is None or (isinstance(output, str) and not output.strip()):
        output = default_output(stored.path, kind=stored.kind, component=stored.component,
                                output_dir=settings.output_dir,
                                label_name=settings.label_name,
                                base_folder=settings.watch_folder)
    if enforce_roots:
        out = check_allowed_path(output, settings.data_roots, what="output")
    else:
        if not isinstance(output, (str, os.PathLike)):
            raise InvalidParameterError(f"output={output!r} must be a path")
        out = os.path.realpath(os.path.expanduser(_strip_file_url(os.fspath(output), "output")))
    _check_output_vs_input(out, stored)
    state = output_state(out)
    if state == "foreign":
        raise InvalidParameterError(
            f"output {out!r} already exists and was not written by blockbuster; it is never "
            "replaced: choose another output path (or remove it yourself)")
    channel = src.channel_axis
    kwargs = dict(kw, channel_axis=channel, level=level)
    opts = dict(choice.options)
    desc = f"{_enum_value(choice.name)}({', '.join(f'{k}={v!r}' for k, v in opts.items())})"
    return SegmentRequest(image=img, output=out, fn=fn, segmenter=_enum_value(choice.name),
                          options=opts, kwargs=kwargs, overwrite=overwrite,
                          description=desc, dask_address=settings.dask_address)


def _inside(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip(os.sep) + os.sep)


def _check_output_vs_input(out: str, stored) -> None:
    img = stored.path
    if out == img or _inside(img, out):
        raise InvalidParameterError(
            f"output {out!r} would replace the input image {img!r}; choose another path")
    if _inside(out, img):
        group = os.path.join(img, stored.component.strip("/")) if stored.component else img
        ok = stored.kind == "ome-zarr" and _inside(out, os.path.join(group, "labels"))
        if not ok:
            raise InvalidParameterError(
                f"output {out!r} is inside the input image {img!r}; only an OME-Zarr image's "
                f"'labels/<name>' may be written into it")


def _logger():
    try:
        from prefect import get_run_logger
        return get_run_logger()
    except Exception:
        return log


def _flow_run_id() -> str | None:
    try:
        from prefect.runtime import flow_run
        fid = flow_run.get_id()
        return str(fid) if fid else None
    except Exception:
        return None


def run_segment(req: SegmentRequest, *, progress: bool = False) -> dict[str, Any]:
    """Run a validated request: lock the output, skip it if complete, else segment.

    Returns
    -------
    dict
        ``status`` ("segmented", "already-segmented" or "busy"), ``image``, ``output``,
        and for "segmented" ``labels``, ``n_tiles``, ``seconds``.
    """
    logger = _logger()
    base = {"image": req.image, "output": req.output, "segmenter": req.description}
    lock = OutputLock(req.output)
    if not lock.acquire({"flow_run_id": _flow_run_id(), "image": req.image}):
        holder = lock.held_by() or {}
        who = ", ".join(f"{k} {holder[k]}" for k in ("flow_run_id", "host", "pid", "time")
                        if holder.get(k))
        logger.warning("skipped %s: its output %s is being written by another run (%s)",
                       req.image, req.output, who or "holder unknown")
        return {"status": "busy", **base, "held_by": holder}
    try:
        if not req.overwrite and output_state(req.output) == "complete":
            logger.info("%s is already segmented (%s is complete); nothing to do",
                        req.image, req.output)
            return {"status": "already-segmented", **base}
        logger.info("segmenting %s with %s into %s", req.image, req.description, req.output)
        t0 = time.perf_counter()
        try:
            summary = _tile_process(req, progress)
        except BaseException as exc:
            if isinstance(exc, Exception):
                _record_failure(req.output, f"{type(exc).__name__}: {exc}")
            raise
        _clear_failures(req.output)
        result = {"status": "segmented", **base,
                  "labels": summary.get("labels_after_merge"),
                  "n_tiles": summary.get("n_tiles"),
                  "tile_shape": summary.get("tile_shape"),
                  "cached": bool(summary.get("cached", False)),
                  "seconds": round(time.perf_counter() - t0, 3)}
        logger.info("segmented %s: %s objects in %s tiles, %.1f s -> %s", req.image,
                    result["labels"], result["n_tiles"], result["seconds"], req.output)
        return result
    finally:
        lock.release()


def _tile_process(req: SegmentRequest, progress: bool) -> dict[str, Any]:
    from ..api import tile_process
    kwargs = dict(req.kwargs)

    def go():
        _, summary = tile_process(req.image, req.fn, write_to=req.output, progress=progress,
                                  return_summary=True, **kwargs)
        return summary

    if req.dask_address:
        from distributed import Client
        with Client(req.dask_address, timeout="60s", set_as_default=True):
            return go()
    return go()


# ---------------------------------------------------------------------------------------
# the flow
# ---------------------------------------------------------------------------------------
def _segment_run_name() -> str:
    try:
        from prefect.runtime import flow_run
        image = str(flow_run.parameters.get("image") or "")
    except Exception:
        image = ""
    name = os.path.basename(image.rstrip("/")) or "image"
    return f"segment-{name}"[:120]


def _title(title: str) -> Any:
    return Field(json_schema_extra={"title": title})


@flow(name="segment", flow_run_name=_segment_run_name, log_prints=False,
      validate_parameters=True)
def segment(
    image: Annotated[str, _title("Input image")],
    segmenter: Annotated[SegmenterChoice, _title("Segmenter")] = SegmenterChoice(),
    output: Annotated[str | None, _title("Output labels")] = None,
    tiling: Annotated[TilingOptions, _title("Tiling and merge")] = TilingOptions(),
    channel_axis: Annotated[int | None, _title("Channel axis")] = None,
    level: Annotated[int, _title("Pyramid level")] = 0,
    overwrite: Annotated[bool, _title("Replace a complete output")] = False,
) -> dict[str, Any]:
    """Segment one image tile by tile with a registered segmenter; merge into global labels.

    Args:
        image: Absolute path of the image: a zarr array, an OME-Zarr image (a folder
            ending in .zarr) or a TIFF file. It must lie under the data roots of the
            machine that runs the flow (BLOCKBUSTER_DATA_ROOTS).
        segmenter: The registered segmenter to run on every tile, and its options.
        output: Absolute path of the label image to write, under the data roots: a zarr
            array path, or <image>/labels/<name> inside an OME-Zarr input. Empty: labels/
            segmentation inside an OME-Zarr input, else <name>.labels.zarr next to the
            input (or under BLOCKBUSTER_OUTPUT_DIR when the machine sets it).
        tiling: Tile size, overlap, how tiles are merged, empty-tile skipping.
        channel_axis: Index of the axis holding channels. Empty: from the OME-Zarr / OME-
            TIFF metadata, else none.
        level: Pyramid level of an OME-Zarr image or pyramidal TIFF to segment; 0 is full
            resolution.
        overwrite: Replace an output that is already complete. Off: a complete output is
            left as it is and the run does nothing. A path blockbuster did not write is
            never replaced.
    """
    req = prepare_segment(image, segmenter, output, tiling, channel_axis=channel_axis,
                          level=level, overwrite=overwrite, enforce_roots=True)
    return run_segment(req)

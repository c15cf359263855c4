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
import logging
import os
import time
from collections.abc import Callable
from typing import Annotated, Any

from prefect import flow
from pydantic import Field

from blockbuster.errors import InvalidParameterError
from blockbuster.io import OutputLock, check_replaceable, parse_location

# The flow's parts, each in its own module; every name importable from here before the
# split still is:
#   segment_params: the parameter models and checking what was given;
#   segment_paths:  data roots, default outputs, output state, failure records;
#   segment_lock:   OutputLock.
from ._params import (
    MergeMode,
    SegmenterChoice,
    SegmenterName,
    TilingOptions,
    _as_segmenter,
    _as_tiling,
    _enum_value,
)
from ._paths import (
    MAX_ATTEMPTS,
    _check_output_vs_input,
    _clear_failures,
    _record_failure,
    check_allowed_path,
    default_output,
    failure_record,
    lock_path,
    output_state,
)
from ._settings import Settings, get_settings

__all__ = [
    "SegmenterName",
    "MergeMode",
    "SegmenterChoice",
    "TilingOptions",
    "SegmentRequest",
    "OutputLock",
    "segment",
    "prepare_segment",
    "run_segment",
    "check_allowed_path",
    "default_output",
    "output_state",
    "lock_path",
    "failure_record",
    "MAX_ATTEMPTS",
]

log = logging.getLogger("blockbuster")


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


def prepare_segment(
    image: str,
    segmenter: Any = None,
    output: str | None = None,
    tiling: Any = None,
    *,
    channel_axis: int | None = None,
    level: int = 0,
    overwrite: bool = False,
    settings: Settings | None = None,
    enforce_roots: bool = True,
) -> SegmentRequest:
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
    from blockbuster.core import normalize_overlap, normalize_tile_shape
    from blockbuster.io import open_image, open_path

    settings = settings or get_settings()
    if not isinstance(overwrite, bool):
        raise InvalidParameterError(f"overwrite={overwrite!r} must be true or false")
    if level is None or isinstance(level, bool) or not isinstance(level, int) or level < 0:
        raise InvalidParameterError(f"level={level!r} must be an integer >= 0")
    if enforce_roots:
        img = check_allowed_path(image, settings.data_roots, what="image")
    else:
        img = _resolved(parse_location(image, param="image"))
    choice = _as_segmenter(
        segmenter
        if segmenter is not None
        else {"name": settings.segmenter, "options": settings.segmenter_options}
    )
    tiles = _as_tiling(tiling)
    fn = choice.build()
    if enforce_roots:
        choice.check_paths(settings.data_roots, settings.model_dir)
    src = open_image(img, channel_axis=channel_axis, level=level)
    stored = open_path(img, level=level)
    kw = tiles.tile_process_kwargs()
    ts = None
    if kw["tile_shape"] != "auto":
        ts = normalize_tile_shape(kw["tile_shape"], src)
    ov = normalize_overlap(kw["overlap"], src, ts)  # refused now, before any run starts
    if kw["merge"] == "overlap" and not any(ov):
        raise InvalidParameterError(
            "merge='overlap' needs overlap > 0; give an overlap "
            "(about one object diameter) or use merge='touch'"
        )
    if output is None or (isinstance(output, str) and not output.strip()):
        output = default_output(
            stored.path,
            kind=stored.kind,
            component=stored.component,
            output_dir=settings.output_dir,
            label_name=settings.label_name,
            base_folder=settings.watch_folder,
        )
    if enforce_roots:
        out = check_allowed_path(output, settings.data_roots, what="output")
    else:
        out = _resolved(parse_location(output, param="output"))
    _check_output_vs_input(out, stored)
    # a path blockbuster did not write is refused now (a complete output of ours is
    # either left alone, "already-segmented", or replaced with overwrite=True)
    check_replaceable(out, overwrite=True, param="output")
    channel = src.channel_axis
    kwargs = dict(kw, channel_axis=channel, level=level)
    opts = dict(choice.options)
    desc = f"{_enum_value(choice.name)}({', '.join(f'{k}={v!r}' for k, v in opts.items())})"
    return SegmentRequest(
        image=img,
        output=out,
        fn=fn,
        segmenter=_enum_value(choice.name),
        options=opts,
        kwargs=kwargs,
        overwrite=overwrite,
        description=desc,
        dask_address=settings.dask_address,
    )


def _resolved(path: str | os.PathLike) -> str:
    """A local path with its links and ``..`` resolved; a URL as it is."""
    from blockbuster.io import is_url

    p = os.fspath(path)
    return p if is_url(p) else os.path.realpath(p)


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
        and for "segmented" ``labels``, ``n_tiles``, ``seconds``, ``pictures`` (where
        the preview and tile map PNGs are, see :mod:`blockbuster.tasks`).
    """
    logger = _logger()
    base = {"image": req.image, "output": req.output, "segmenter": req.description}
    lock = OutputLock(req.output)
    if not lock.acquire({"flow_run_id": _flow_run_id(), "image": req.image}):
        holder = lock.held_by() or {}
        who = ", ".join(
            f"{k} {holder[k]}" for k in ("flow_run_id", "host", "pid", "time") if holder.get(k)
        )
        logger.warning(
            "skipped %s: its output %s is being written by another run (%s)",
            req.image,
            req.output,
            who or "holder unknown",
        )
        return {"status": "busy", **base, "held_by": holder}
    try:
        if not req.overwrite and output_state(req.output) == "complete":
            logger.info(
                "%s is already segmented (%s is complete); nothing to do", req.image, req.output
            )
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
        result = {
            "status": "segmented",
            **base,
            "labels": summary.get("labels_after_merge"),
            "n_tiles": summary.get("n_tiles"),
            "tile_shape": summary.get("tile_shape"),
            "cached": bool(summary.get("cached", False)),
            "seconds": round(time.perf_counter() - t0, 3),
            "pictures": summary.get("pictures"),
        }
        logger.info(
            "segmented %s: %s objects in %s tiles, %.1f s -> %s",
            req.image,
            result["labels"],
            result["n_tiles"],
            result["seconds"],
            req.output,
        )
        return result
    finally:
        lock.release()


def _tile_process(req: SegmentRequest, progress: bool) -> dict[str, Any]:
    from blockbuster.api import tile_process

    kwargs = dict(req.kwargs)

    def go():
        _, summary = tile_process(
            req.image,
            req.fn,
            write_to=req.output,
            overwrite=req.overwrite,
            progress=progress,
            return_summary=True,
            **kwargs,
        )
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


@flow(name="segment", flow_run_name=_segment_run_name, log_prints=False, validate_parameters=True)
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
    req = prepare_segment(
        image,
        segmenter,
        output,
        tiling,
        channel_axis=channel_axis,
        level=level,
        overwrite=overwrite,
        enforce_roots=True,
    )
    return run_segment(req)

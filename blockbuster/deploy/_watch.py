"""The ``watch-acquisitions`` flow: segment each new, finished acquisition once.

A scan walks a folder (and its sub-folders) for acquisitions: zarr / OME-Zarr stores (a
folder ending in ``.zarr``, or holding zarr metadata) and TIFF files. For each one it
decides, in this order (the first that applies):

``outside-roots``
    it (a symbolic link in the folder, or what it points to) resolves outside the data
    roots: refused before anything in it is opened;
``already-segmented``
    its output (:func:`~blockbuster.deploy.default_output`, named from the whole input
    name) is complete, and its completion record holds this input's identity (path,
    layout and modification stamp): an acquisition replaced under the same name is
    segmented again (replacing its labels), as is an output whose record names no input;
``unfinished``
    it has no completion marker (``<acquisition><marker>`` next to it, or
    ``<acquisition>/<marker>`` inside a store; marker ``.done`` by default) and something
    in it changed less than the settle time ago (also: it is still empty);
``unreadable``
    finished, but it does not open as an image (the log says why);
``output-exists``
    something blockbuster did not write is at its output path (never replaced);
``busy``
    another run holds the output's lock (an overlapping scan, an event-triggered run);
``gave-up``
    the last ``MAX_ATTEMPTS`` runs on it failed (delete the ``.blockbuster-failed`` file
    next to the output to retry);
``segment``
    otherwise: the flow ``segment`` runs for it, as a subflow, one acquisition after the
    other (each one uses the whole Dask cluster).

Never twice: ``segment`` takes an exclusive lock on the output before it writes and checks
again, under the lock, that the output is not complete. Two scans that overlap (or a scan
and an event-triggered run) may both decide to segment an acquisition; the second to get
there finds the lock held ("busy") or the output complete ("already-segmented") and does
nothing. A run that crashes releases its lock with its process; its unfinished output is
replaced by the next attempt.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

from prefect import flow

from blockbuster.errors import (
    InputError,
    InvalidParameterError,
    PathNotAllowedError,
    UnsupportedLocationError,
)
from blockbuster.io import OutputLock, is_url, under_roots

from ._params import SegmenterChoice, TilingOptions, _as_segmenter, _as_tiling, _enum_value
from ._paths import (
    LABELS_SUFFIX,
    MAX_ATTEMPTS,
    check_allowed_path,
    default_output,
    failure_record,
    output_state,
)
from ._segment import _logger, _title, segment
from ._settings import get_settings

__all__ = [
    "watch_acquisitions",
    "scan_folder",
    "find_acquisitions",
    "acquisition_finished",
    "Decision",
]

_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
_ZARR_META = ("zarr.json", ".zarray", ".zgroup", ".zattrs")
_MAX_DEPTH = 8


@dataclass
class Decision:
    """What a scan decided for one acquisition."""

    acquisition: str
    status: str
    detail: str = ""
    output: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    replace: bool = False  # the output is complete but made from another input


def _is_store(path: str) -> bool:
    return path.lower().endswith(".zarr") or any(
        os.path.exists(os.path.join(path, m)) for m in _ZARR_META
    )


def find_acquisitions(
    folder: str, *, marker: str = ".done", skip: tuple[str, ...] = (), max_depth: int = _MAX_DEPTH
) -> list[str]:
    """Acquisitions under ``folder``: zarr stores and TIFF files, sorted by path.

    Hidden entries, completion markers, blockbuster outputs (``*.labels.zarr``) and the
    folders in ``skip`` are left out; stores are not entered; symbolic links to folders
    are not followed.
    """
    found: list[str] = []
    skip_real = {os.path.realpath(s) for s in skip}

    def walk(d: str, depth: int) -> None:
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            return
        for e in entries:
            name = e.name
            low = name.lower()
            if (
                name.startswith(".")
                or (marker and name.endswith(marker))
                or low.endswith(LABELS_SUFFIX)
            ):
                continue
            try:
                is_dir = e.is_dir()
                is_link = e.is_symlink()
            except OSError:
                continue
            if is_dir:
                if os.path.realpath(e.path) in skip_real:
                    continue
                if _is_store(e.path):
                    found.append(e.path)
                elif not is_link and depth < max_depth:
                    walk(e.path, depth + 1)
            elif low.endswith(_TIFF_SUFFIXES):
                found.append(e.path)

    walk(folder, 0)
    return found


def _newest_mtime(path: str, cutoff: float) -> tuple[float | None, int]:
    """Newest modification time inside ``path`` (the file itself for a file), and the
    number of entries seen; stops early at the first entry newer than ``cutoff``.

    Hidden entries, and an OME-Zarr's ``labels`` group (written by blockbuster), are
    left out; so is the store folder's own time (creating ``labels`` changes it).
    """
    if not os.path.isdir(path):
        st = os.stat(path)
        return st.st_mtime, 1
    newest: float | None = None
    seen = 0
    stack = [(path, True)]
    while stack:
        d, top = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                if e.name.startswith(".") or (top and e.name == "labels"):
                    continue
                try:
                    st = e.stat(follow_symlinks=False)
                    is_dir = e.is_dir(follow_symlinks=False)
                except OSError:
                    continue
                seen += 1
                if newest is None or st.st_mtime > newest:
                    newest = st.st_mtime
                    if newest > cutoff:
                        return newest, seen
                if is_dir:
                    stack.append((e.path, False))
    return newest, seen


def acquisition_finished(
    path: str, *, settle_seconds: float, marker: str = ".done", now: float | None = None
) -> tuple[bool, str]:
    """Whether ``path`` is finished, and why (or why not)."""
    if marker:
        for m in (
            path.rstrip(os.sep) + marker,
            os.path.join(path, marker) if os.path.isdir(path) else None,
        ):
            if m and os.path.exists(m):
                return True, f"completion marker {os.path.basename(m)}"
    now = time.time() if now is None else now
    cutoff = now - settle_seconds
    try:
        newest, seen = _newest_mtime(path, cutoff)
    except OSError as exc:
        return False, f"cannot be read: {exc}"
    if newest is None or seen == 0:
        return False, "still empty"
    age = now - newest
    if newest > cutoff:
        return False, (
            f"changed {max(age, 0):.0f} s ago (finished after {settle_seconds:g} s "
            f"unchanged, or with a {marker or 'completion'} marker)"
        )
    return True, f"unchanged for {age:.0f} s"


def scan_folder(
    folder: str,
    *,
    settle_seconds: float,
    marker: str,
    output_dir: str | None,
    label_name: str,
    now: float | None = None,
    roots: tuple[str, ...] | list[str] | None = None,
) -> list[Decision]:
    """Decide, for every acquisition under ``folder``, what to do (see the module doc).

    ``roots``: the data roots; an acquisition resolving outside them (a symbolic link)
    is refused before anything in it is opened (None: no check, the command line)."""
    from blockbuster.io import open_path

    skip = (output_dir,) if output_dir else ()
    out: list[Decision] = []
    for acq in find_acquisitions(folder, marker=marker, skip=skip):
        if roots is not None:
            try:
                under_roots(acq, roots, param="acquisition")
            except PathNotAllowedError as exc:
                out.append(Decision(acq, "outside-roots", str(exc)))
                continue
        info, err = None, None
        try:
            info = open_path(acq)
        except (InputError, InvalidParameterError, OSError, ValueError) as exc:
            err = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        output = state = None
        if info is not None:
            output = default_output(
                info.path,
                kind=info.kind,
                component=info.component,
                output_dir=output_dir,
                label_name=label_name,
                base_folder=folder,
            )
            state = output_state(output)
            if state == "complete":
                if _made_from(output, info):
                    out.append(Decision(acq, "already-segmented", f"{output} is complete", output))
                    continue
                replace = True
            else:
                replace = False
        done, why = acquisition_finished(
            acq, settle_seconds=settle_seconds, marker=marker, now=now
        )
        if not done:
            out.append(Decision(acq, "unfinished", why, output))
        elif info is None or output is None:  # output is None only when info is
            out.append(Decision(acq, "unreadable", err or "cannot be opened", None))
        elif state == "foreign":
            out.append(
                Decision(
                    acq,
                    "output-exists",
                    f"{output} exists and was not written by blockbuster",
                    output,
                )
            )
        elif OutputLock(output).is_held():
            holder = OutputLock(output).held_by() or {}
            out.append(
                Decision(
                    acq,
                    "busy",
                    "being segmented by "
                    + (
                        f"flow run {holder.get('flow_run_id')}"
                        if holder.get("flow_run_id")
                        else "another run"
                    ),
                    output,
                )
            )
        else:
            rec = failure_record(output)
            if rec and int(rec.get("attempts", 0)) >= MAX_ATTEMPTS:
                out.append(
                    Decision(
                        acq,
                        "gave-up",
                        f"{rec['attempts']} runs failed, last: "
                        f"{rec.get('error', '')[:300]}; delete "
                        f"{rec.get('path')} to retry",
                        output,
                    )
                )
            else:
                detail = why
                if replace:
                    detail = f"{output} was made from another input of this name; {why}"
                out.append(Decision(acq, "segment", detail, output, replace=replace))
    return out


def _made_from(output: str, info) -> bool:
    """Whether the complete output's record names this input (same identity)."""
    import json

    from blockbuster.io import completion_record

    rec = completion_record(output) or {}
    then = rec.get("input")
    if not isinstance(then, dict):
        return False  # no identity recorded: cannot be trusted as this input's labels
    now = json.loads(json.dumps(info.identity(), default=str))
    return all(then.get(k) == v for k, v in now.items())


def _artifact(folder: str, decisions: list[Decision]) -> None:
    try:
        from prefect.artifacts import create_table_artifact

        rows = [
            {
                "acquisition": d.acquisition,
                "status": d.status,
                "detail": d.detail,
                "output": d.output or "",
            }
            for d in decisions
        ]
        create_table_artifact(
            rows or [{"acquisition": "", "status": "no acquisitions", "detail": "", "output": ""}],
            key="watch-acquisitions",
            description=f"Scan of {folder}: what was decided for each acquisition.",
        )
    except Exception:  # pragma: no cover - reporting never breaks a scan
        _logger().debug("could not create the scan artifact", exc_info=True)


def _run_name() -> str:
    try:
        from prefect.runtime import flow_run

        folder = str(flow_run.parameters.get("folder") or "")
    except Exception:
        folder = ""
    return f"watch-{os.path.basename(folder.rstrip('/')) or 'acquisitions'}"[:120]


@flow(
    name="watch-acquisitions", flow_run_name=_run_name, log_prints=False, validate_parameters=True
)
def watch_acquisitions(
    folder: Annotated[str | None, _title("Acquisitions folder")] = None,
    segmenter: Annotated[SegmenterChoice | None, _title("Segmenter")] = None,
    tiling: Annotated[TilingOptions, _title("Tiling and merge")] = TilingOptions(),
    settle_seconds: Annotated[float | None, _title("Settle time (s)")] = None,
    output_dir: Annotated[str | None, _title("Output folder")] = None,
    max_runs: Annotated[int | None, _title("Most acquisitions per scan")] = None,
    dry_run: Annotated[bool, _title("Dry run")] = False,
) -> dict[str, Any]:
    """Scan a folder for new, finished acquisitions and segment each one once.

    Args:
        folder: Absolute path of the folder to scan (sub-folders included), under the
            data roots. Empty: BLOCKBUSTER_WATCH_FOLDER of the machine.
        segmenter: The registered segmenter and options to run. Empty: BLOCKBUSTER_SEGMENTER
            and BLOCKBUSTER_SEGMENTER_OPTIONS of the machine.
        tiling: Tile size, overlap, merge and empty-tile options of every run.
        settle_seconds: An acquisition without a completion marker is finished when
            nothing in it changed for this many seconds. Empty: BLOCKBUSTER_SETTLE_SECONDS
            (300).
        output_dir: Where labels go, mirroring the sub-folders of the scanned folder.
            Empty: BLOCKBUSTER_OUTPUT_DIR, else inside an OME-Zarr image (labels/
            segmentation) or next to the acquisition (<name>.labels.zarr).
        max_runs: Segment at most this many acquisitions in one scan (the next scan takes
            the rest). Empty: all.
        dry_run: Only report what would be done; segment nothing.
    """
    settings = get_settings()
    logger = _logger()
    folder = folder or settings.watch_folder
    if not folder:
        raise InvalidParameterError(
            "no folder to scan: pass folder, or set BLOCKBUSTER_WATCH_FOLDER on the machine "
            "that runs the flow"
        )
    folder = check_allowed_path(folder, settings.data_roots, what="folder")
    if is_url(folder):
        raise UnsupportedLocationError(
            f"folder={folder!r} is a URL: watch-acquisitions scans a local folder (an "
            "acquisition in a bucket is segmented by a `segment` run, e.g. from an event)"
        )
    if not os.path.isdir(folder):
        raise InputError(f"folder {folder!r} does not exist or is not a folder")
    choice = _as_segmenter(
        segmenter
        if segmenter is not None
        else {"name": settings.segmenter, "options": settings.segmenter_options}
    )
    choice.build()  # unknown options fail now, before the scan
    choice.check_paths(settings.data_roots, settings.model_dir)
    tiles = _as_tiling(tiling)
    settle = settings.settle_seconds if settle_seconds is None else float(settle_seconds)
    if settle < 0:
        raise InvalidParameterError(f"settle_seconds={settle_seconds!r} must be >= 0")
    if max_runs is not None and max_runs < 0:
        raise InvalidParameterError(f"max_runs={max_runs!r} must be >= 0")
    out_dir = output_dir or settings.output_dir
    if out_dir:
        out_dir = check_allowed_path(out_dir, settings.data_roots, what="output_dir")
        if is_url(out_dir):
            raise UnsupportedLocationError(
                f"output_dir={out_dir!r} is a URL: watch-acquisitions writes into a local "
                "folder (give segment runs an s3:// output instead)"
            )

    decisions = scan_folder(
        folder,
        settle_seconds=settle,
        marker=settings.completion_marker,
        output_dir=out_dir,
        label_name=settings.label_name,
        roots=settings.data_roots,
    )
    counts: dict[str, int] = {}
    for d in decisions:
        counts[d.status] = counts.get(d.status, 0) + 1
    logger.info(
        "scan of %s: %s",
        folder,
        ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no acquisitions",
    )
    todo = [d for d in decisions if d.status == "segment"]
    if max_runs is not None:
        for d in todo[max_runs:]:
            d.status, d.detail = "deferred", f"max_runs={max_runs} reached; next scan"
        todo = todo[:max_runs]
    failed = []
    for d in todo:
        if dry_run:
            d.status = "would-segment"
            continue
        state = segment(
            image=d.acquisition,
            segmenter=choice,
            output=d.output,
            tiling=tiles,
            overwrite=d.replace,
            return_state=True,
        )
        if state.is_completed():
            try:
                res = state.result(raise_on_failure=False)
            except Exception:
                res = None
            d.result = res if isinstance(res, dict) else {}
            d.status = d.result.get("status", "segmented")
            if d.status == "segmented":
                d.detail = (
                    f"{d.result.get('labels')} objects, {d.result.get('n_tiles')} "
                    f"tiles, {d.result.get('seconds')} s"
                )
        else:
            d.status = "failed"
            d.detail = (state.message or state.type.value)[:500]
            failed.append(d)
    _artifact(folder, decisions)
    summary = {
        "folder": folder,
        "segmenter": _enum_value(choice.name),
        "processed": [d.acquisition for d in decisions if d.status == "segmented"],
        "failed": [d.acquisition for d in failed],
        "decisions": [{k: v for k, v in asdict(d).items() if k != "result"} for d in decisions],
    }
    if failed:
        raise RuntimeError(
            f"{len(failed)} of {len(todo)} acquisitions failed to segment: "
            + "; ".join(f"{d.acquisition}: {d.detail}" for d in failed)[:2000]
        )
    return summary

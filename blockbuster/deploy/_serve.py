"""Serve the deployments ``segment`` and ``watch-acquisitions`` from one process.

``blockbuster serve`` (or :func:`serve`) registers both deployments with the Prefect API
(``PREFECT_API_URL``) and runs their flow runs in subprocesses of this process until it is
stopped (Ctrl-C / SIGTERM; the schedules are paused on the way out):

- ``segment/segment``: the form of :func:`blockbuster.deploy.segment`, whose
  segmenter defaults to ``BLOCKBUSTER_SEGMENTER`` (+ options), with an event trigger:
  each event ``blockbuster.acquisition.finished`` runs it for the path the event's
  resource names (``prefect.resource.id``);
- ``watch-acquisitions/watch-acquisitions``: :func:`blockbuster.deploy.watch_acquisitions`
  over ``BLOCKBUSTER_WATCH_FOLDER`` on the schedule of ``BLOCKBUSTER_WATCH_CRON`` (in
  ``BLOCKBUSTER_WATCH_TIMEZONE``), else every ``BLOCKBUSTER_WATCH_INTERVAL`` seconds.

The settings are checked first (data roots set, folder under them, segmenter registered
with valid options, schedule valid): a server never serves a configuration that can only
fail. ``deployments/prefect.yaml`` declares the same deployments for ``prefect deploy``
with a work pool instead.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

from blockbuster.errors import InvalidParameterError, PathNotAllowedError

from ._settings import Settings, get_settings

__all__ = [
    "EVENT",
    "SEGMENT",
    "WATCH",
    "TAGS",
    "check_settings",
    "build_deployments",
    "acquisition_trigger",
    "watch_schedule",
    "serve",
    "describe_deployments",
]

#: The custom event an acquisition system emits when an acquisition is complete.
EVENT = "blockbuster.acquisition.finished"
#: Deployment names (both flows' deployments have their flow's name).
SEGMENT = "segment"
WATCH = "watch-acquisitions"
TAGS = ["blockbuster"]


def check_settings(settings: Settings) -> list[str]:
    """Raise on settings the deployments cannot work with; return warnings."""
    from ._params import SegmenterChoice, _as_segmenter
    from ._paths import check_allowed_path

    warnings: list[str] = []
    if not settings.data_roots:
        raise PathNotAllowedError(
            "BLOCKBUSTER_DATA_ROOTS is not set: deployment runs may only read and write "
            f"under these folders; set it (absolute folders separated by {os.pathsep!r})"
        )
    from blockbuster.io import is_url

    for r in settings.data_roots:
        if not is_url(r) and not os.path.isdir(r):  # a bucket is checked by each run
            warnings.append(f"data root {r!r} does not exist (yet)")
    if settings.watch_folder:
        check_allowed_path(
            settings.watch_folder, settings.data_roots, what="BLOCKBUSTER_WATCH_FOLDER"
        )
        if not os.path.isdir(settings.watch_folder):
            warnings.append(f"watch folder {settings.watch_folder!r} does not exist (yet)")
    else:
        warnings.append(
            "BLOCKBUSTER_WATCH_FOLDER is not set: watch-acquisitions is served "
            "without a schedule (runs must name a folder)"
        )
    if settings.output_dir:
        check_allowed_path(settings.output_dir, settings.data_roots, what="BLOCKBUSTER_OUTPUT_DIR")
    choice: SegmenterChoice = _as_segmenter(
        {"name": settings.segmenter, "options": settings.segmenter_options}
    )
    choice.build()
    return warnings


def watch_schedule(settings: Settings):
    """The schedule of ``watch-acquisitions`` (None without a watch folder)."""
    from prefect.schedules import Cron, Interval

    if not settings.watch_folder:
        return None
    if settings.watch_cron:
        return Cron(settings.watch_cron, timezone=settings.watch_timezone)
    return Interval(
        datetime.timedelta(seconds=settings.watch_interval), timezone=settings.watch_timezone
    )


def acquisition_trigger():
    """The event trigger of ``segment``: one run per ``blockbuster.acquisition.finished``
    event, for the path in the event's ``prefect.resource.id``."""
    from prefect.events.schemas.automations import Posture
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name="segment finished acquisitions",
        description=f"Runs segment for the path named by each {EVENT} event "
        "(its prefect.resource.id).",
        expect={EVENT},
        for_each={"prefect.resource.id"},
        posture=Posture.Reactive,
        threshold=1,
        parameters={"image": "{{ event.resource.id }}"},
    )


def _segmenter_default(settings: Settings) -> dict[str, Any]:
    return {"name": settings.segmenter, "options": dict(settings.segmenter_options)}


def build_deployments(settings: Settings | None = None) -> list:
    """The two ``RunnerDeployment`` objects, checked against the settings."""
    from prefect.types.entrypoint import EntrypointType

    from ._segment import segment
    from ._watch import watch_acquisitions

    settings = settings or get_settings()
    check_settings(settings)
    seg = segment.to_deployment(
        name=SEGMENT,
        description="Segment one image tile by tile with a registered segmenter. Runs on "
        f"request (UI, API, `prefect deployment run`) and for every {EVENT} "
        "event.",
        tags=TAGS,
        parameters={"segmenter": _segmenter_default(settings)},
        triggers=[acquisition_trigger()],
        enforce_parameter_schema=True,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    sched = watch_schedule(settings)
    watch_params: dict[str, Any] = {
        "segmenter": _segmenter_default(settings),
        "settle_seconds": settings.settle_seconds,
    }
    if settings.watch_folder:
        watch_params["folder"] = settings.watch_folder
    if settings.output_dir:
        watch_params["output_dir"] = settings.output_dir
    watch = watch_acquisitions.to_deployment(
        name=WATCH,
        description="Scan the acquisitions folder for new, finished acquisitions and "
        "segment each one once.",
        tags=TAGS,
        parameters=watch_params,
        schedules=[sched] if sched is not None else None,
        enforce_parameter_schema=True,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    return [seg, watch]


def describe_deployments(settings: Settings | None = None) -> str:
    """What :func:`serve` would serve, in words (``blockbuster serve --check``)."""
    settings = settings or get_settings()
    warnings = check_settings(settings)
    if settings.watch_folder and settings.watch_cron:
        when = f"cron {settings.watch_cron!r}" + (
            f" ({settings.watch_timezone})" if settings.watch_timezone else " (UTC)"
        )
    elif settings.watch_folder:
        when = f"every {settings.watch_interval:g} s"
    else:
        when = "no schedule (BLOCKBUSTER_WATCH_FOLDER not set)"
    lines = [
        f"data roots:          {os.pathsep.join(settings.data_roots)}",
        f"segmenter:           {settings.segmenter} {settings.segmenter_options or ''}".rstrip(),
        f"{SEGMENT}/{SEGMENT}:     on request and on each {EVENT} event",
        f"{WATCH}/{WATCH}: {settings.watch_folder or '-'}, {when}, settle "
        f"{settings.settle_seconds:g} s or marker {settings.completion_marker!r}",
        f"concurrent runs:     {settings.serve_limit or 'unlimited'}",
    ]
    lines += [f"warning: {w}" for w in warnings]
    return "\n".join(lines)


def serve(settings: Settings | None = None, *, limit: int | None | str = "settings") -> None:
    """Register the deployments and run their flow runs until stopped (blocks).

    Parameters
    ----------
    settings : Settings, optional
        Default: read from the environment.
    limit : int or None
        Most flow runs at once (default: ``BLOCKBUSTER_SERVE_LIMIT``, 1: a segmentation
        uses the whole machine); None: no limit.
    """
    from prefect import serve as prefect_serve

    settings = settings or get_settings()
    if limit == "settings":
        limit = settings.serve_limit
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise InvalidParameterError(f"limit={limit!r} must be a positive integer or None")
    deployments = build_deployments(settings)
    from blockbuster.tasks import ensure_api

    ensure_api()  # a temporary server that fails to start is stopped, not orphaned
    prefect_serve(*deployments, limit=limit)

"""Settings of the deployments and the command line, read from ``BLOCKBUSTER_*`` variables.

They are read from the environment of the process that runs a flow (the ``blockbuster
serve`` process, or a Prefect worker), each time a flow starts, never from a deployment
parameter: whoever may start a run (the Prefect UI, the API, an event) cannot widen
what the machine lets it read or write.

=================================  =========================================================
variable                           meaning (default)
=================================  =========================================================
``BLOCKBUSTER_DATA_ROOTS``         folders that deployment inputs and outputs must resolve
                                   under, separated by ``os.pathsep`` (``:`` on Linux).
                                   Unset or empty: every path is refused.
``BLOCKBUSTER_WATCH_FOLDER``       folder ``watch-acquisitions`` scans (none)
``BLOCKBUSTER_WATCH_INTERVAL``     seconds between scans (600)
``BLOCKBUSTER_WATCH_CRON``         cron schedule of scans instead, e.g. ``0 2 * * *`` (none)
``BLOCKBUSTER_WATCH_TIMEZONE``     time zone of the cron schedule, e.g. ``Europe/Berlin``
                                   (Prefect's default, UTC)
``BLOCKBUSTER_SETTLE_SECONDS``     an acquisition is finished when nothing in it changed
                                   for this long (300)
``BLOCKBUSTER_COMPLETION_MARKER``  or when ``<acquisition><marker>`` exists next to it, or
                                   ``<acquisition>/<marker>`` inside a store (``.done``)
``BLOCKBUSTER_SEGMENTER``          registered segmenter of scheduled / event runs
                                   (``watershed``)
``BLOCKBUSTER_SEGMENTER_OPTIONS``  its options, a JSON object (``{}``)
``BLOCKBUSTER_OUTPUT_DIR``         where scheduled / event runs write labels; none: an
                                   OME-Zarr image gets ``labels/<label name>`` inside it,
                                   anything else a sibling ``<stem>.labels.zarr``
``BLOCKBUSTER_LABEL_NAME``         name of the label image (``segmentation``)
``BLOCKBUSTER_DASK_ADDRESS``       scheduler address of an existing Dask cluster to run on
                                   (none: each run starts a local cluster)
``BLOCKBUSTER_SERVE_LIMIT``        flow runs ``blockbuster serve`` runs at once (1)
=================================  =========================================================

Examples
--------
>>> s = Settings.from_env({"BLOCKBUSTER_DATA_ROOTS": "/data:/scratch",
...                        "BLOCKBUSTER_WATCH_CRON": "0 2 * * *"})
>>> s.data_roots, s.watch_cron, s.settle_seconds
(('/data', '/scratch'), '0 2 * * *', 300.0)
>>> Settings.from_env({"BLOCKBUSTER_SETTLE_SECONDS": "soon"})
Traceback (most recent call last):
...
blockbuster.errors.InvalidParameterError: BLOCKBUSTER_SETTLE_SECONDS='soon' is not valid: give a number of seconds >= 0
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from blockbuster.errors import InvalidParameterError

__all__ = ["Settings", "get_settings", "ENV_PREFIX"]

ENV_PREFIX = "BLOCKBUSTER_"


class Settings(BaseModel):
    """The settings (see the module docstring for the variables and defaults)."""

    model_config = ConfigDict(frozen=True)

    data_roots: tuple[str, ...] = Field(
        (), description="Folders that deployment inputs and outputs must resolve under."
    )
    watch_folder: str | None = Field(None, description="Folder scanned for acquisitions.")
    watch_interval: float = Field(600.0, description="Seconds between scans.")
    watch_cron: str | None = Field(
        None, description="Cron schedule of scans (wins over the interval)."
    )
    watch_timezone: str | None = Field(None, description="Time zone of the cron schedule.")
    settle_seconds: float = Field(
        300.0, description="Quiet time after which an acquisition counts as finished."
    )
    completion_marker: str = Field(
        ".done", description="Name suffix of the completion marker file."
    )
    segmenter: str = Field("watershed", description="Segmenter of scheduled / event runs.")
    segmenter_options: dict[str, Any] = Field(default_factory=dict, description="Its options.")
    output_dir: str | None = Field(None, description="Where scheduled / event runs write.")
    label_name: str = Field("segmentation", description="Name of the label image.")
    dask_address: str | None = Field(None, description="Scheduler of an existing Dask cluster.")
    serve_limit: int | None = Field(1, description="Concurrent flow runs of `serve`.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the ``BLOCKBUSTER_*`` variables of ``environ`` (default ``os.environ``).

        Raises
        ------
        InvalidParameterError
            A variable has a value that cannot work (the message names it).
        """
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            v = env.get(ENV_PREFIX + name)
            return v.strip() if v is not None and v.strip() != "" else None

        def bad(name: str, fix: str) -> InvalidParameterError:
            return InvalidParameterError(
                f"{ENV_PREFIX}{name}={env.get(ENV_PREFIX + name)!r} is not valid: {fix}"
            )

        def number(name: str, default: float, *, positive: bool = False) -> float:
            v = get(name)
            if v is None:
                return default
            try:
                x = float(v)
            except ValueError:
                x = float("nan")
            if not (x > 0 if positive else x >= 0):  # NaN fails both
                raise bad(name, "give a number of seconds " + ("> 0" if positive else ">= 0"))
            return x

        kw: dict[str, Any] = {}
        roots = get("DATA_ROOTS")
        if roots is not None:
            parts = [p.strip() for p in roots.split(os.pathsep) if p.strip()]
            for p in parts:
                if not os.path.isabs(os.path.expanduser(p)):
                    raise bad(
                        "DATA_ROOTS",
                        f"{p!r} is not an absolute path; give absolute "
                        f"folders separated by {os.pathsep!r}",
                    )
            kw["data_roots"] = tuple(os.path.expanduser(p) for p in parts)
        for key in ("WATCH_FOLDER", "OUTPUT_DIR"):
            v = get(key)
            if v is not None:
                v = os.path.expanduser(v)
                if not os.path.isabs(v):
                    raise bad(key, "give an absolute path")
                kw[key.lower()] = v
        kw["watch_interval"] = number("WATCH_INTERVAL", 600.0, positive=True)
        kw["settle_seconds"] = number("SETTLE_SECONDS", 300.0)
        cron = get("WATCH_CRON")
        tz = get("WATCH_TIMEZONE")
        if tz is not None:
            try:
                from zoneinfo import ZoneInfo

                ZoneInfo(tz)
            except Exception:
                raise bad(
                    "WATCH_TIMEZONE", "give an IANA time zone name such as 'Europe/Berlin'"
                ) from None
            kw["watch_timezone"] = tz
        if cron is not None:
            from prefect.client.schemas.schedules import CronSchedule

            try:
                CronSchedule(cron=cron, timezone=tz)
            except Exception:
                raise bad(
                    "WATCH_CRON",
                    "give a cron expression such as '0 2 * * *' (every night at 02:00)",
                ) from None
            kw["watch_cron"] = cron
        marker = get("COMPLETION_MARKER")
        if marker is not None:
            if os.sep in marker or marker in (".", ".."):
                raise bad("COMPLETION_MARKER", "give a file name suffix such as '.done'")
            kw["completion_marker"] = marker
        seg = get("SEGMENTER")
        if seg is not None:
            kw["segmenter"] = seg
        opts = get("SEGMENTER_OPTIONS")
        if opts is not None:
            try:
                val = json.loads(opts)
            except ValueError:
                val = None
            if not isinstance(val, dict):
                raise bad("SEGMENTER_OPTIONS", "give a JSON object, e.g. '{\"threshold\": 1000}'")
            kw["segmenter_options"] = val
        name = get("LABEL_NAME")
        if name is not None:
            if os.sep in name or name.startswith(".") or "/" in name:
                raise bad("LABEL_NAME", "give a plain name such as 'segmentation'")
            kw["label_name"] = name
        addr = get("DASK_ADDRESS")
        if addr is not None:
            kw["dask_address"] = addr
        limit = get("SERVE_LIMIT")
        if limit is not None:
            if limit.lower() in ("none", "0", "unlimited"):
                kw["serve_limit"] = None
            elif limit.isdigit():
                kw["serve_limit"] = int(limit)
            else:
                raise bad("SERVE_LIMIT", "give a positive integer, or 'none' for no limit")
        return cls(**kw)


def get_settings() -> Settings:
    """The settings of this process, read now from its environment."""
    return Settings.from_env()

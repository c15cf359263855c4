"""Settings of the deployments and the command line, read from ``BLOCKBUSTER_*`` variables
(through pydantic-settings: one typed field per variable, checked by validators).

They are read from the environment of the process that runs a flow (the ``blockbuster
serve`` process, or a Prefect worker), each time a flow starts, never from a deployment
parameter: whoever may start a run (the Prefect UI, the API, an event) cannot widen
what the machine lets it read or write.

=================================  =========================================================
variable                           meaning (default)
=================================  =========================================================
``BLOCKBUSTER_DATA_ROOTS``         folders, or object store URL prefixes
                                   (``s3://bucket/prefix``, ``gs://``, ``az://``), that
                                   deployment inputs and outputs must lie under, separated
                                   by ``os.pathsep`` (``:`` on Linux; the ``:`` of a
                                   ``scheme://`` is not a separator). Unset or empty:
                                   every path is refused.
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
``BLOCKBUSTER_MODEL_DIR``          folder of model weights deployments may load (besides
                                  the data roots): a segmenter option naming a file
                                  (cellpose ``pretrained_model``) must lie under one
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
import re
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from blockbuster.config import ENV_PREFIX, EnvSettings

__all__ = ["Settings", "get_settings", "ENV_PREFIX"]


class _Bad(ValueError):
    """A variable's value cannot work; the message is the fix."""


def _seconds(v: Any, *, positive: bool) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        x = float("nan")
    if not (x > 0 if positive else x >= 0):  # NaN fails both
        raise _Bad("give a number of seconds " + ("> 0" if positive else ">= 0"))
    return x


class Settings(EnvSettings):
    """The settings (see the module docstring for the variables and defaults).

    ``Settings()`` reads this process's environment; keyword arguments win over it;
    :meth:`~blockbuster.config.EnvSettings.from_env` reads only a given mapping.
    """

    data_roots: Annotated[tuple[str, ...], NoDecode] = Field(
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
    segmenter_options: Annotated[dict[str, Any], NoDecode] = Field(
        default_factory=dict, description="Its options."
    )
    output_dir: str | None = Field(None, description="Where scheduled / event runs write.")
    label_name: str = Field("segmentation", description="Name of the label image.")
    model_dir: str | None = Field(
        None, description="Folder of model weights deployments may load (besides the roots)."
    )
    dask_address: str | None = Field(None, description="Scheduler of an existing Dask cluster.")
    serve_limit: Annotated[int | None, NoDecode] = Field(
        1, description="Concurrent flow runs of `serve`."
    )

    @field_validator("data_roots", mode="before")
    @classmethod
    def _roots(cls, v: Any) -> tuple[str, ...]:
        from blockbuster.io import is_url, join_url, split_url

        if isinstance(v, str):  # "/data:s3://lab/raw": a ':' before '//' is a scheme's
            sep = re.escape(os.pathsep)
            parts = [p.strip() for p in re.split(sep + r"(?!//)", v)]
        else:
            parts = list(v)
        roots = []
        for p in (str(p).strip() for p in parts if str(p).strip()):
            if is_url(p):
                try:
                    scheme, bucket, prefix = split_url(p)
                except ValueError as exc:
                    raise _Bad(f"{p!r}: {exc}") from None
                if scheme in ("http", "https"):
                    raise _Bad(f"{p!r}: http(s) URLs are read-only; give a bucket URL")
                roots.append(join_url(f"{scheme}://{bucket}", prefix))
                continue
            p = os.path.expanduser(p)
            if not os.path.isabs(p):
                raise _Bad(
                    f"{p!r} is neither an absolute path nor a bucket URL; give absolute "
                    f"folders or s3:// (gs://, az://) prefixes separated by {os.pathsep!r}"
                )
            roots.append(p)
        return tuple(roots)

    @field_validator("watch_folder", "output_dir", "model_dir", mode="before")
    @classmethod
    def _absolute(cls, v: Any) -> str | None:
        if v is None:
            return None
        v = os.path.expanduser(str(v).strip())
        if not os.path.isabs(v):
            raise _Bad("give an absolute path")
        return v

    @field_validator("watch_interval", mode="before")
    @classmethod
    def _interval(cls, v: Any) -> float:
        return _seconds(v, positive=True)

    @field_validator("settle_seconds", mode="before")
    @classmethod
    def _settle(cls, v: Any) -> float:
        return _seconds(v, positive=False)

    @field_validator("watch_timezone", mode="before")
    @classmethod
    def _timezone(cls, v: Any) -> str | None:
        if v is None:
            return None
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(str(v))
        except Exception:
            raise _Bad("give an IANA time zone name such as 'Europe/Berlin'") from None
        return str(v)

    @field_validator("watch_cron", mode="before")
    @classmethod
    def _cron(cls, v: Any) -> str | None:
        if v is None:
            return None
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=str(v))
        except Exception:
            raise _Bad(
                "give a cron expression such as '0 2 * * *' (every night at 02:00)"
            ) from None
        return str(v)

    @field_validator("completion_marker", mode="before")
    @classmethod
    def _marker(cls, v: Any) -> str:
        v = str(v)
        if os.sep in v or v in (".", ".."):
            raise _Bad("give a file name suffix such as '.done'")
        return v

    @field_validator("segmenter_options", mode="before")
    @classmethod
    def _options(cls, v: Any) -> dict[str, Any]:
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except ValueError:
                v = None
        if not isinstance(v, dict):
            raise _Bad("give a JSON object, e.g. '{\"threshold\": 1000}'")
        return v

    @field_validator("label_name", mode="before")
    @classmethod
    def _label_name(cls, v: Any) -> str:
        v = str(v)
        if os.sep in v or v.startswith(".") or "/" in v:
            raise _Bad("give a plain name such as 'segmentation'")
        return v

    @field_validator("serve_limit", mode="before")
    @classmethod
    def _limit(cls, v: Any) -> int | None:
        if v is None or (isinstance(v, str) and v.strip().lower() in ("none", "0", "unlimited")):
            return None
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
        if isinstance(v, str) and v.strip().isdigit():
            return int(v)
        raise _Bad("give a positive integer, or 'none' for no limit")


def get_settings() -> Settings:
    """The settings of this process, read now from its environment."""
    return Settings.from_env()

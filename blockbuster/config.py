"""Settings of the library itself (not of deployments), read from ``BLOCKBUSTER_*``
environment variables through pydantic-settings.

==================================  ===========================================================
variable                            meaning (default)
==================================  ===========================================================
``BLOCKBUSTER_DIRECT_CHUNKS``       read and write whole zarr chunks and shards on a local
                                    disk with blockbuster's own code where the array's layout
                                    allows it (``true``); ``false``: always through
                                    zarr-python (slower per chunk, the reference behaviour)
``BLOCKBUSTER_PICTURES``            make each run's pictures (preview, tile map) as PNGs in the
                                    output and as artifacts (``true``); ``false``: none, for
                                    runs where their cost (drawing and encoding a 1024²
                                    picture, docs/benchmarks.md) is not wanted
``BLOCKBUSTER_WORKER_FORKSERVER``   start the worker processes of blockbuster's own local
                                    cluster from a forkserver that imported what a worker
                                    needs once (``true``; Linux only); ``false``: Dask's
                                    default, a fresh interpreter per worker
                                    (docs/clusters.md)
==================================  ===========================================================

Deployment settings (data roots, the watch folder, ...) are :class:`blockbuster.deploy.Settings`;
both are :class:`EnvSettings`: pydantic-settings models whose ``from_env`` reads a given
mapping (this process's environment by default) and turns a bad value into an
:class:`~blockbuster.errors.InvalidParameterError` naming the variable and the fix.

Examples
--------
>>> runtime_settings({"BLOCKBUSTER_DIRECT_CHUNKS": "false"}).direct_chunks
False
>>> runtime_settings({}).direct_chunks
True
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from contextvars import ContextVar
from typing import TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from blockbuster.errors import InvalidParameterError

__all__ = ["ENV_PREFIX", "EnvSettings", "RuntimeSettings", "runtime_settings"]

ENV_PREFIX = "BLOCKBUSTER_"

_GIVEN_ONLY: ContextVar[bool] = ContextVar("blockbuster_settings_given_only", default=False)

S = TypeVar("S", bound="EnvSettings")


class EnvSettings(BaseSettings):
    """``BLOCKBUSTER_*`` settings: ``Cls()`` reads this process's environment (keyword
    arguments win); :meth:`from_env` reads only the mapping it is given."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="ignore", env_ignore_empty=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, then the environment; only the given values in
        :meth:`from_env`."""
        return (init_settings,) if _GIVEN_ONLY.get() else (init_settings, env_settings)

    @classmethod
    def from_env(cls: type[S], environ: Mapping[str, str] | None = None) -> S:
        """Read the ``BLOCKBUSTER_*`` variables of ``environ`` (default ``os.environ``).

        Raises
        ------
        InvalidParameterError
            A variable has a value that cannot work (the message names it and the fix).
        """
        env = os.environ if environ is None else environ
        values = {
            name: env[ENV_PREFIX + name.upper()].strip()
            for name in cls.model_fields
            if env.get(ENV_PREFIX + name.upper(), "").strip()
        }
        token = _GIVEN_ONLY.set(True)
        try:
            return cls(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            name = str(err["loc"][0]) if err.get("loc") else "?"
            var = ENV_PREFIX + name.upper()
            fix = str((err.get("ctx") or {}).get("error", err["msg"]))
            raise InvalidParameterError(f"{var}={env.get(var)!r} is not valid: {fix}") from None
        finally:
            _GIVEN_ONLY.reset(token)


class RuntimeSettings(EnvSettings):
    """The library's settings (see the module docstring)."""

    direct_chunks: bool = Field(
        True,
        description="Whole-chunk I/O by blockbuster's own code where the layout allows it "
        "(false: always zarr-python).",
    )
    pictures: bool = Field(True, description="Make each run's preview and tile map (false: none).")
    worker_forkserver: bool = Field(
        True,
        description="Start the worker processes of blockbuster's own local cluster from a "
        "forkserver that has imported what a worker needs once (false: Dask's default, "
        "each worker a fresh interpreter importing it all again).",
    )


def runtime_settings(environ: Mapping[str, str] | None = None) -> RuntimeSettings:
    """The library's settings read now from ``environ`` (default: this process's
    environment), parsed once per distinct set of values (validating costs ~0.5 ms; the
    direct chunk path asks for every array it opens).

    Raises
    ------
    InvalidParameterError
        A variable has a value that cannot work (the message names it).
    """
    env = os.environ if environ is None else environ
    raw = tuple(
        (ENV_PREFIX + name.upper(), env.get(ENV_PREFIX + name.upper(), ""))
        for name in RuntimeSettings.model_fields
    )
    return _parse(raw)


@functools.lru_cache(maxsize=64)
def _parse(raw: tuple[tuple[str, str], ...]) -> RuntimeSettings:
    return RuntimeSettings.from_env(dict(raw))

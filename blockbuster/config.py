"""Settings of the library itself (not of deployments), read from ``BLOCKBUSTER_*``
environment variables through pydantic-settings.

==============================  ===========================================================
variable                        meaning (default)
==============================  ===========================================================
``BLOCKBUSTER_DIRECT_CHUNKS``   read and write whole zarr chunks and shards on a local
                                disk with blockbuster's own code where the array's layout
                                allows it (``true``); ``false``: always through
                                zarr-python (slower per chunk, the reference behaviour)
==============================  ===========================================================

Deployment settings (data roots, the watch folder, ...) are :class:`blockbuster.deploy.Settings`.

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

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from blockbuster.errors import InvalidParameterError

__all__ = ["RuntimeSettings", "runtime_settings"]

ENV_PREFIX = "BLOCKBUSTER_"


class RuntimeSettings(BaseSettings):
    """The library's settings (see the module docstring)."""

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
        """Only the values given: :func:`runtime_settings` reads the environment it is
        given (this process's by default) and passes them."""
        return (init_settings,)

    direct_chunks: bool = Field(
        True,
        description="Whole-chunk I/O by blockbuster's own code where the layout allows it "
        "(false: always zarr-python).",
    )


def runtime_settings(environ: Mapping[str, str] | None = None) -> RuntimeSettings:
    """The settings read now from ``environ`` (default: this process's environment).

    Raises
    ------
    InvalidParameterError
        A variable has a value that cannot work (the message names it).
    """
    env = os.environ if environ is None else environ
    raw = tuple(
        (name, env.get(ENV_PREFIX + name.upper(), "").strip())
        for name in RuntimeSettings.model_fields
    )
    return _parse(raw)


@functools.lru_cache(maxsize=64)
def _parse(raw: tuple[tuple[str, str], ...]) -> RuntimeSettings:
    """Parsed once per distinct set of values (validating costs ~0.5 ms; the direct
    chunk path asks for every array it opens)."""
    values = {name: v for name, v in raw if v}
    try:
        return RuntimeSettings(**values)
    except ValidationError as exc:
        name = str(exc.errors()[0]["loc"][0])
        var = ENV_PREFIX + name.upper()
        raise InvalidParameterError(
            f"{var}={dict(raw).get(name)!r} is not valid: give true or false"
        ) from None

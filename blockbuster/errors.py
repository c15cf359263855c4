"""The one error hierarchy of blockbuster.

Every error raised on purpose by blockbuster derives from :class:`BlockbusterError` and
also from the builtin exception a caller would naturally catch (``ValueError`` for a bad
parameter, ``OSError`` for an unreadable input, ...), so both ``except BlockbusterError``
and ``except ValueError`` work.

Messages name the parameter (and the tile, where there is one) and say how to fix it.

Examples
--------
>>> from blockbuster.errors import InvalidParameterError
>>> issubclass(InvalidParameterError, ValueError)
True
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BlockbusterError",
    "InputChangedError",
    "InvalidParameterError",
    "InputError",
    "InputNotFoundError",
    "ParameterTypeError",
    "OutputExistsError",
    "OutputBusyError",
    "UnsupportedLocationError",
    "TileFunctionError",
    "TileOutputError",
    "LabelOverflowError",
    "ClusterError",
    "NoGPUError",
    "PrefectUnavailableError",
    "SegmenterNotFoundError",
    "PathNotAllowedError",
    "ModelNotFoundError",
    "DependencyMissingError",
    "CellposeUnavailableError",
    "StagingCorruptError",
    "IdentityWarning",
    "StagingCorruptWarning",
]


class BlockbusterError(Exception):
    """Base class of every error blockbuster raises on purpose."""


class InvalidParameterError(BlockbusterError, ValueError):
    """A parameter has a value that cannot work (the message names it and the fix)."""


class InputError(BlockbusterError, OSError):
    """An input image cannot be opened or is not a supported kind of image."""


class ParameterTypeError(InvalidParameterError, TypeError):
    """A parameter has the wrong type (a non-callable ``fn``, a string for a number)."""


class InputNotFoundError(InputError, FileNotFoundError):
    """An input path does not exist."""


class OutputExistsError(BlockbusterError, FileExistsError):
    """Something is at an output (or staging) path that may not be replaced.

    Raised before anything is written or deleted; the message names the path, why it is
    kept and the fix (another path, ``overwrite=True`` for a complete blockbuster output,
    or removing it yourself).
    """


class OutputBusyError(BlockbusterError, TimeoutError):
    """Another run holds the output's lock (the message says who) past the wait allowed."""


class UnsupportedLocationError(InvalidParameterError):
    """A path uses a syntax blockbuster does not support there (a URL, fsspec ``::``)."""


class TileFunctionError(BlockbusterError, RuntimeError):
    """The per-tile function raised; the message names the tile and its origin.

    The original exception is chained as ``__cause__``.
    """

    def __init__(
        self, message: str, tile_index: int | None = None, origin: tuple[int, ...] | None = None
    ):
        super().__init__(message)
        self.tile_index = tile_index
        self.origin = origin

    def __reduce__(self):  # keep the tile context when sent between processes
        return (type(self), (self.args[0], self.tile_index, self.origin))


class TileOutputError(TileFunctionError, ValueError):
    """The per-tile function returned something that is not a valid label image."""


class LabelOverflowError(BlockbusterError, OverflowError):
    """Labels do not fit the requested or possible integer type."""


class ClusterError(BlockbusterError, RuntimeError):
    """The Dask client or cluster cannot be used as asked."""


class NoGPUError(ClusterError):
    """``use_gpu=True`` was asked for on a machine where no GPU is visible."""


class PrefectUnavailableError(BlockbusterError, RuntimeError):
    """Prefect's API cannot be used: its temporary server did not start in time."""


class SegmenterNotFoundError(BlockbusterError, LookupError):
    """A segmenter name is not registered under the ``blockbuster.segmenters`` group."""


class PathNotAllowedError(BlockbusterError, PermissionError):
    """A path resolves outside the configured data roots."""


class ModelNotFoundError(BlockbusterError, FileNotFoundError):
    """A model's weights are not available locally (nothing is downloaded at run time)."""


class DependencyMissingError(BlockbusterError, ImportError):
    """An optional dependency (an extra) is not installed where it is needed."""


class CellposeUnavailableError(DependencyMissingError):
    """Cellpose (or a version the plugin supports) is not installed where the model runs."""


class InputChangedError(BlockbusterError, RuntimeError):
    """The input changed while a run was reading it (stored labels holding ids their
    index pass did not see): run again on an input nobody is writing to."""


class StagingCorruptError(BlockbusterError, OSError):
    """A staged tile's record failed its checksum: it is never used. A run started again
    recomputes that tile (the staging is checked when it is resumed)."""

    def __init__(self, message: str, tile: int | None = None):
        super().__init__(message)
        self.tile = tile

    def __reduce__(self) -> tuple[Any, ...]:  # raised on a worker, caught in the flow
        return (type(self), (str(self), self.tile))


class IdentityWarning(UserWarning):
    """A run's input or function has no identity: the run neither resumes another's
    staging nor treats an output as already complete (it still runs)."""


class StagingCorruptWarning(UserWarning):
    """A staged record failed its checksum; the tile it names is recomputed."""

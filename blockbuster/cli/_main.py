"""The command line: ``blockbuster run|merge|estimate-empty|info|demo|serve``.

Exit codes: 0 success; 1 the work failed (a tile function raised, the cluster broke, ...);
2 bad usage or input (unknown option, missing or unreadable image, unregistered
segmenter, invalid parameter, path refused). Errors are one line on stderr, prefixed
``blockbuster: error:``; ``--debug`` adds the traceback (and Prefect's logs).

Examples
--------
::

    blockbuster run image.zarr --segmenter watershed --option threshold=1200 \\
        --overlap 16 --write-to labels.zarr --progress
    blockbuster estimate-empty image.zarr --tile-shape 512,512
    blockbuster info image.zarr --segmenter cellpose
    blockbuster serve
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

# The parser, the commands and the shared exit codes/errors live in their own modules
# (one job each); every name importable from here before the split still is.
from ._errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, PROG, UsageError
from ._parser import (
    build_parser,
)

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE"]


# ---------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------
def _usage_error_types() -> tuple[type, ...]:
    from blockbuster.errors import (
        InputError,
        InvalidParameterError,
        ModelNotFoundError,
        OutputExistsError,
        PathNotAllowedError,
        SegmenterNotFoundError,
    )

    types: list[type] = [
        OutputExistsError,
        UsageError,
        InvalidParameterError,
        InputError,
        SegmenterNotFoundError,
        PathNotAllowedError,
        ModelNotFoundError,
        FileNotFoundError,
        NotADirectoryError,
        IsADirectoryError,
    ]
    try:
        from pydantic import ValidationError

        types.append(ValidationError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def _one_line(exc: BaseException) -> str:
    try:
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            from blockbuster.deploy import one_line_validation_error

            return one_line_validation_error(exc)
    except ImportError:  # pragma: no cover
        pass
    text = " ".join(str(exc).split())
    if not text:
        text = type(exc).__name__
    elif not isinstance(exc, _usage_error_types()) and type(exc).__module__ == "builtins":
        text = f"{type(exc).__name__}: {text}"
    return text


def _quiet(args_debug: bool, verbose: bool) -> None:
    """Keep Prefect's console logs (and the tracebacks it logs) out of a CLI run.

    Prefect's logs still reach its API (the UI) when one is configured; only the console
    handler is raised. Set before Prefect configures logging (at its import).
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if args_debug or verbose:
        return
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    import warnings

    # a local cluster's dashboard falling back from a busy port 8787 is not news
    warnings.filterwarnings("ignore", message=r"Port \d+ is already in use", category=UserWarning)


def _setup_logging(debug: bool, verbose: bool):
    """blockbuster's own log lines on stderr; returns a function undoing it."""
    lg = logging.getLogger("blockbuster")
    saved = (lg.level, lg.propagate)
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
    lg.addHandler(h)
    lg.setLevel(logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING)
    lg.propagate = False

    def restore() -> None:
        lg.removeHandler(h)
        lg.setLevel(saved[0])
        lg.propagate = saved[1]

    return restore


def _pre_scan(argv: Sequence[str]) -> tuple[bool, bool]:
    return "--debug" in argv, ("-v" in argv or "--verbose" in argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug, verbose = _pre_scan(argv)
    _quiet(debug, verbose)
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = debug or getattr(args, "debug", False)
    restore = _setup_logging(debug, verbose or getattr(args, "verbose", False))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except SystemExit:
        raise
    except BaseException as exc:
        code = EXIT_USAGE if isinstance(exc, _usage_error_types()) else EXIT_FAILURE
        if debug:
            import traceback

            traceback.print_exc()
        hint = " (--debug shows the traceback)" if code == EXIT_FAILURE and not debug else ""
        sys.stderr.write(f"{PROG}: error: {_one_line(exc)}{hint}\n")
        sys.stderr.flush()
        return code
    finally:
        restore()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

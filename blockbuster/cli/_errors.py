"""Exit codes and error types of the command line (shared by the parser, the commands
and the entry point in :mod:`blockbuster.cli`).

Examples
--------
>>> EXIT_OK, EXIT_FAILURE, EXIT_USAGE
(0, 1, 2)
"""

from __future__ import annotations

__all__ = ["EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE", "PROG", "UsageError", "CommandError"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
PROG = "blockbuster"


class UsageError(Exception):
    """Bad command-line usage (exit code 2)."""


class CommandError(Exception):
    """The work failed, with a message that says it all (exit code 1)."""

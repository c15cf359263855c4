"""The wall and CPU seconds of a command and of every process it started, orphans included.

``/usr/bin/time`` counts only the children a process waited for: the servers of a driver
a test SIGKILLs are reparented to init and their CPU is lost. This runs the command as a
child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``), so orphans are reparented here, waits
for every descendant (up to 30 s after the command ends), and prints what they all used.

Usage (docs/testing.md)::

    python bench/cpu_of.py python -m pytest -n 0 -q tests/test_safety.py -p no:cacheprovider
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child becomes the command
        os.execvp(argv[0], argv)
    _, status = os.waitpid(pid, 0)
    wall = time.monotonic() - t0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the orphans reparented here
        try:
            reaped, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if reaped == 0:
            time.sleep(0.2)
    else:
        print("cpu_of: descendants still running after 30 s (not counted)", file=sys.stderr)
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        f"{wall:.1f} s wall {r.ru_utime:.1f}+{r.ru_stime:.1f} cpu (every descendant)",
        file=sys.stderr,
    )
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

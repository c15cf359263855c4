"""Test helpers: hash every byte of directory trees, and check that a refused call
changed none of them.

:func:`tree_state` records every entry under a folder (files by SHA-256 of their bytes,
links by their target, folders by presence). :func:`assert_refused` runs a call that
must be refused, checks the error type and that its message names what it should, and
that every tree given is byte for byte what it was. With ``BLOCKBUSTER_REFUSALS_LOG``
set to a file, each case appends one JSON line (case, error, refused, bytes lost):
``docs/security.md``'s table is counted from that log (see its "How the table is made").
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

import pytest


def tree_state(root: str | os.PathLike) -> dict[str, tuple[str, int]]:
    """``relative path -> (kind:digest, size)`` for every entry under ``root`` (the root
    itself included); symbolic links are recorded, never followed."""
    root = os.fspath(root)
    out: dict[str, tuple[str, int]] = {}
    if not os.path.lexists(root):
        return out

    def add(path: str) -> None:
        rel = os.path.relpath(path, root)
        if os.path.islink(path):
            out[rel] = ("link:" + os.readlink(path), 0)
        elif os.path.isdir(path):
            out[rel] = ("dir", 0)
        else:
            h = hashlib.sha256()
            size = 0
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
                    size += len(block)
            out[rel] = ("file:" + h.hexdigest(), size)

    add(root)
    if os.path.isdir(root) and not os.path.islink(root):
        for d, dirs, files in os.walk(root):
            for name in sorted(dirs) + sorted(files):
                add(os.path.join(d, name))
    return out


def bytes_lost(before: dict[str, tuple[str, int]], after: dict[str, tuple[str, int]]) -> int:
    """Bytes of the entries of ``before`` that are gone or changed in ``after``."""
    return sum(
        size for rel, (digest, size) in before.items() if after.get(rel, ("", 0))[0] != digest
    )


def log_refusal(record: dict[str, Any]) -> None:
    """Append one bad input's record to ``BLOCKBUSTER_REFUSALS_LOG`` (when set)."""
    path = os.environ.get("BLOCKBUSTER_REFUSALS_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def assert_refused(
    call: Callable[[], Any],
    error: type[BaseException] | tuple[type[BaseException], ...],
    *trees: str | os.PathLike,
    match: str | None = None,
    case: str = "",
    allow_new: bool = False,
) -> BaseException:
    """Run ``call``; it must raise ``error`` (message matching ``match``) and leave every
    tree in ``trees`` exactly as it was (no entry changed or removed; none added unless
    ``allow_new``). Returns the exception."""
    before = [tree_state(t) for t in trees]
    record: dict[str, Any] = {"case": case or getattr(call, "__name__", "call")}
    try:
        with pytest.raises(error, match=match) as info:
            call()
    except BaseException as exc:
        record.update(refused=False, error=f"{type(exc).__name__}: {exc}"[:300])
        after = [tree_state(t) for t in trees]
        record["bytes_lost"] = sum(bytes_lost(b, a) for b, a in zip(before, after))
        log_refusal(record)
        raise
    after = [tree_state(t) for t in trees]
    lost = sum(bytes_lost(b, a) for b, a in zip(before, after))
    added = sorted(
        os.path.join(os.fspath(t), rel)
        for t, b, a in zip(trees, before, after)
        for rel in set(a) - set(b)
    )
    msg = str(info.value)
    record.update(
        refused=True,
        error=f"{type(info.value).__name__}: {msg}"[:300],
        bytes_lost=lost,
        added=len(added),
    )
    log_refusal(record)
    assert lost == 0, f"{lost} bytes changed or removed by a refused call: {record}"
    assert allow_new or not added, f"a refused call created {added}"
    assert msg and "\n" not in msg.strip(), f"not a one-line message: {msg!r}"
    return info.value

"""Stable identities of inputs, per-tile functions and runs, for caching and resume.

Nothing here ever hashes pixel data: an input is identified by where it lives and its
metadata (path, shape, dtype, chunks, modification stamp), a function by its qualified
name, its source code where it has one, and its options.

A callable may define ``cache_token()`` returning a string that identifies what it
computes; the built-in segmenters do (their class, version and options).

Examples
--------
>>> def f(tile):
...     return tile > 0
>>> fn_token(f) == fn_token(f)
True
>>> run_key({"a": 1}) == run_key({"a": 1}) != run_key({"a": 2})
True
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
from collections.abc import Callable
from typing import Any

__all__ = ["fn_token", "run_key", "path_stamp", "stable_hash"]


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash a JSON-able description (keys sorted) to a short hex string."""
    text = json.dumps(obj, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _source_hash(obj: Any) -> str | None:
    try:
        src = inspect.getsource(obj)
    except (OSError, TypeError):
        return None
    return hashlib.sha256(src.encode()).hexdigest()[:16]


def fn_token(fn: Callable[..., Any]) -> str:
    """A string identifying what ``fn`` computes: name, source hash and options.

    - an object with ``cache_token()``: that string;
    - ``functools.partial``: the wrapped function's token plus the bound arguments;
    - a function: module, qualified name and a hash of its source;
    - another callable object: its class's token plus ``repr(fn)`` (dataclasses and
      other objects whose repr lists their options identify themselves this way).
    """
    custom = getattr(fn, "cache_token", None)
    if callable(custom) and not inspect.isclass(fn):
        return str(custom())
    if isinstance(fn, functools.partial):
        return stable_hash(
            ["partial", fn_token(fn.func), repr(fn.args), repr(sorted(fn.keywords.items()))]
        )
    if inspect.isfunction(fn) or inspect.ismethod(fn) or inspect.isbuiltin(fn):
        name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
        return stable_hash(["function", name, _source_hash(fn)])
    cls = type(fn)
    name = f"{cls.__module__}.{cls.__qualname__}"
    return stable_hash(["object", name, _source_hash(cls), repr(fn)])


def path_stamp(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Identity of a file or directory store: resolved path and newest modification time.

    For a directory (a zarr store) the newest ``mtime`` among its metadata files and
    top-level entries is used, which changes when the store is rewritten, without
    walking millions of chunk files.
    """
    p = os.path.realpath(os.fspath(path))
    try:
        st = os.stat(p)
    except OSError:
        return {"path": p, "mtime_ns": None}
    mtime = st.st_mtime_ns
    if os.path.isdir(p):
        try:
            with os.scandir(p) as it:
                for entry in it:
                    try:
                        mtime = max(mtime, entry.stat().st_mtime_ns)
                    except OSError:
                        pass
        except OSError:
            pass
    return {"path": p, "mtime_ns": mtime, "size": None if os.path.isdir(p) else st.st_size}


def run_key(description: dict[str, Any]) -> str:
    """The key of a run: a hash of everything that determines its result."""
    return stable_hash(description, length=20)

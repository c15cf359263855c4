"""Stable identities of per-tile functions, in-memory arrays and runs, for caching and resume.

A function is identified by what it computes, never by where it sits in memory:

- an object with ``cache_token()`` (:class:`~blockbuster.core.CacheTokened`): that string
  (the built-in segmenters, ``cellpose_fn``: class, version, options, weights hash);
- a plain function, a lambda or a closure: its module and qualified name, its code
  (bytecode, constants and names, nested functions' code included), its defaults, the
  values its closure cells hold and the module-level values it refers to (other
  functions by their own identity, modules by name);
- a bound method: the method's function as above plus the state of its instance;
- another callable object: its class (the code of its methods) plus its state;
- ``functools.partial``: the wrapped function plus the bound arguments.

State (closure values, defaults, instance attributes, partial arguments) is tokenized by
:func:`dask.base.tokenize` in deterministic mode: NumPy arrays by content, dataclasses
field by field, other objects by their pickle, and ``__dask_tokenize__`` where an object
defines it. When a part cannot be tokenized deterministically (an open file, a lock, an
object whose pickle changes from one call to the next), the identity is *unknown*:
:func:`fn_identity` returns None and the reason, and the caller neither resumes nor
reports an output as already complete.

Large state (a loaded model) would be pickled and hashed on every call: give such an
object a ``cache_token()`` that names it cheaply (e.g. a hash of its weights file, cached
by path, size and modification time, as ``cellpose_fn`` does).

Examples
--------
>>> def make(t):
...     def fn(tile):
...         return tile > t
...     return fn
>>> fn_identity(make(1))[0] == fn_identity(make(1))[0] != fn_identity(make(9))[0]
True
>>> import threading
>>> token, why = fn_identity(lambda tile, lock=threading.Lock(): tile)
>>> token is None, "cache_token()" in why
(True, True)
>>> run_key({"a": 1}) == run_key({"a": 1}) != run_key({"a": 2})
True
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
import types
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._tile_function import cache_token_of

__all__ = [
    "fn_identity",
    "fn_token",
    "array_token",
    "run_key",
    "stable_hash",
    "UnknownIdentity",
]

_PY = f"{sys.implementation.name}-{sys.version_info[0]}.{sys.version_info[1]}"


class UnknownIdentity(Exception):
    """Raised inside this module when a part of a function cannot be identified."""


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash a JSON-able description (keys sorted) to a short hex string."""
    text = json.dumps(obj, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def run_key(description: dict[str, Any]) -> str:
    """The key of a run: a hash of everything that determines its result."""
    return stable_hash(description, length=20)


def array_token(arr: NDArray[Any]) -> str:
    """A content hash of a NumPy array (dtype, shape and every byte), xxh3-128.

    >>> a = np.arange(6).reshape(2, 3)
    >>> array_token(a) == array_token(a.copy()) != array_token(a.T)
    True
    """
    import xxhash

    a = np.ascontiguousarray(arr)
    h = xxhash.xxh3_128()
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.reshape(-1).data.cast("B") if a.size else b"")
    return h.hexdigest()


# ------------------------------------------------------------------------------------
# functions
# ------------------------------------------------------------------------------------
def _value_token(value: Any, seen: set[int]) -> Any:
    """A deterministic token of a value a function uses (a closure cell, a default, an
    instance's state, a partial's argument, a module global)."""
    if isinstance(value, (int, float, str, bytes, bool, type(None))):
        return value
    if isinstance(value, types.ModuleType):
        return ("module", value.__name__, getattr(value, "__version__", None))
    if isinstance(value, type):
        return _class_token(value, seen)
    if callable(value) and not isinstance(value, np.ndarray):
        return _callable_token(value, seen)
    return _tokenize(value)


def _tokenize(value: Any) -> str:
    import dask
    from dask.base import TokenizationError, tokenize

    try:
        with dask.config.set({"tokenize.ensure-deterministic": True}):
            return tokenize(value, ensure_deterministic=True)
    except TokenizationError:
        raise UnknownIdentity(
            f"a value of type {type(value).__module__}.{type(value).__qualname__} it holds "
            "cannot be tokenized deterministically (its pickle fails or differs from one "
            "call to the next)"
        ) from None
    except RecursionError:  # pragma: no cover - pathological object graphs
        raise UnknownIdentity(
            f"a value of type {type(value).__qualname__} is too deeply nested"
        ) from None


def _code_token(code: types.CodeType) -> tuple[Any, ...]:
    consts = tuple(_const_token(c) for c in code.co_consts)
    return (code.co_name, code.co_code, consts, code.co_names, code.co_varnames, code.co_freevars)


def _const_token(c: Any) -> Any:
    if isinstance(c, types.CodeType):
        return _code_token(c)
    if isinstance(c, frozenset):  # its repr's order depends on the hash seed
        return ("frozenset", tuple(sorted(repr(v) for v in c)))
    if isinstance(c, tuple):
        return tuple(_const_token(v) for v in c)
    return repr(c)


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= _global_names(c)
    return names


def _function_token(fn: types.FunctionType, seen: set[int]) -> Any:
    if id(fn) in seen:  # recursion (a function that calls itself, mutual references)
        return ("seen", fn.__module__, fn.__qualname__)
    seen = seen | {id(fn)}
    code = fn.__code__
    closure = tuple(  # values captured from enclosing scopes
        _named(f"the value {name!r} it captures", _cell_token, cell, seen)
        for name, cell in zip(code.co_freevars, fn.__closure__ or ())
    )
    defaults = tuple(_value_token(v, seen) for v in (fn.__defaults__ or ()))
    kwdefaults = tuple(
        (k, _value_token(v, seen)) for k, v in sorted((fn.__kwdefaults__ or {}).items())
    )
    glb = fn.__globals__
    used = []
    for name in sorted(_global_names(code)):
        if name in glb:
            value = glb[name]
            if value is fn:
                continue
            used.append((name, _named(f"the global {name!r} it uses", _value_token, value, seen)))
    return (
        "function",
        _PY,
        fn.__module__,
        fn.__qualname__,
        _code_token(code),
        defaults,
        kwdefaults,
        closure,
        tuple(used),
    )


def _named(
    what: str, tokenizer: Callable[[Any, set[int]], Any], value: Any, seen: set[int]
) -> Any:
    try:
        return tokenizer(value, seen)
    except UnknownIdentity as exc:
        raise UnknownIdentity(f"{what}: {exc}") from None


def _cell_token(cell: types.CellType, seen: set[int]) -> Any:
    try:
        value = cell.cell_contents
    except ValueError:  # an empty cell (a name assigned later in the enclosing scope)
        return ("empty-cell",)
    return _value_token(value, seen)


def _class_token(cls: type, seen: set[int]) -> Any:
    """A class by name and the code of the methods it (and its non-builtin bases) define."""
    if id(cls) in seen:
        return ("seen-class", cls.__module__, cls.__qualname__)
    seen = seen | {id(cls)}
    if cls.__module__ == "builtins":
        return ("class", "builtins", cls.__qualname__)
    parts = []
    for klass in cls.__mro__:
        if klass.__module__ in ("builtins", "abc", "typing"):
            continue
        methods = []
        for name, attr in sorted(vars(klass).items()):
            func = attr.__func__ if isinstance(attr, (classmethod, staticmethod)) else attr
            if isinstance(func, property):
                func = func.fget
            if isinstance(func, types.FunctionType):
                methods.append((name, _code_token(func.__code__)))
        parts.append((klass.__module__, klass.__qualname__, tuple(methods)))
    return ("class", tuple(parts))


def _state_token(obj: Any, seen: set[int]) -> Any:
    """The state of an instance, not its address."""
    if id(obj) in seen:
        return ("seen-object", type(obj).__qualname__)
    seen = seen | {id(obj)}
    token = cache_token_of(obj)
    if token is not None:
        return ("cache_token", token)
    state = getattr(obj, "__dict__", None)
    own = getattr(type(obj), "__getstate__", None)
    if own is not None and own is not getattr(object, "__getstate__", None):
        state = obj.__getstate__()  # what the workers get (e.g. no cached model)
        if not isinstance(state, dict):
            return ("state", _named("its state", _value_token, state, seen))
    if state is not None and not hasattr(obj, "__dask_tokenize__"):
        slots = {
            s: getattr(obj, s)
            for k in type(obj).__mro__
            for s in getattr(k, "__slots__", ())
            if isinstance(s, str) and s not in ("__dict__", "__weakref__") and hasattr(obj, s)
        }
        items = sorted({**state, **slots}.items())
        return (
            "state",
            tuple((k, _named(f"its attribute {k!r}", _value_token, v, seen)) for k, v in items),
        )
    return ("state", _tokenize(obj))


def _callable_token(fn: Any, seen: set[int]) -> Any:
    token = cache_token_of(fn)
    if token is not None:
        return ("cache_token", token)
    if isinstance(fn, functools.partial):
        return (
            "partial",
            _callable_token(fn.func, seen),
            tuple(_value_token(a, seen) for a in fn.args),
            tuple((k, _value_token(v, seen)) for k, v in sorted(fn.keywords.items())),
        )
    if isinstance(fn, types.MethodType):
        owner = fn.__self__
        owner_token = (
            _class_token(owner, seen) if isinstance(owner, type) else _state_token(owner, seen)
        )
        return ("method", _callable_token(fn.__func__, seen), owner_token)
    if isinstance(fn, types.FunctionType):
        return _function_token(fn, seen)
    if isinstance(fn, (types.BuiltinFunctionType, np.ufunc)):
        return ("builtin", _tokenize(fn))
    if isinstance(fn, type):
        return _class_token(fn, seen)
    return ("object", _class_token(type(fn), seen), _state_token(fn, seen))


def fn_identity(fn: Callable[..., Any]) -> tuple[str | None, str | None]:
    """The identity of what ``fn`` computes, or None and the reason it cannot be had.

    Returns
    -------
    (token, reason)
        ``token``: a hex string, equal for two functions that compute the same thing
        (same code, same closure values, same instance state, same partial arguments, or
        the same ``cache_token()``) in any process; None when some part cannot be
        tokenized deterministically, and then ``reason`` says which and how to fix it.

    Examples
    --------
    >>> import functools
    >>> def f(tile, k=1):
    ...     return tile > k
    >>> a, _ = fn_identity(functools.partial(f, k=2))
    >>> a == fn_identity(functools.partial(f, k=2))[0] != fn_identity(functools.partial(f, k=3))[0]
    True
    """
    token = cache_token_of(fn)
    if token is not None:
        return token, None  # the function names itself
    try:
        parts = _callable_token(fn, set())
    except UnknownIdentity as exc:
        name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        return None, (
            f"the identity of fn {name!r} cannot be established: {exc}. Give it a "
            "cache_token() method returning a string that names what it computes (e.g. "
            "its class, version and options), or keep such state out of it"
        )
    return stable_hash(repr(parts), length=32), None


def fn_token(fn: Callable[..., Any]) -> str:
    """:func:`fn_identity`'s token; raises ``ValueError`` naming the reason when unknown.

    >>> fn_token(len) == fn_token(len)
    True
    """
    token, why = fn_identity(fn)
    if token is None:
        raise ValueError(why)
    return token

"""The registry of segmenters: entry points of the group ``blockbuster.segmenters``.

A segmenter is registered by a *factory*: a function taking keyword options and
returning a picklable callable ``seg(tile) -> labels``. A package registers one in its
``pyproject.toml``::

    [project.entry-points."blockbuster.segmenters"]
    mymodel = "mypackage.segment:mymodel_factory"

The built-ins ``threshold`` and ``watershed`` are always available, also when blockbuster
runs from a source tree without being installed; their names cannot be taken over by
another package (an entry point of the same name pointing elsewhere is ignored). When two
other packages register the same name, the first one found wins.

Only registered names can be looked up: a deployment's "segmenter" parameter can never
import arbitrary code.

Examples
--------
>>> sorted(set(available_segmenters()) & {"threshold", "watershed"})
['threshold', 'watershed']
>>> seg = get_segmenter("watershed", min_distance=4)
>>> seg.min_distance
4
>>> segmenter_options_schema("threshold")["min_size"]
OptionSpec(default=0, annotation='int', doc='Objects with fewer voxels are removed (labels stay consecutive).')
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, NamedTuple

from blockbuster.errors import InvalidParameterError, SegmenterNotFoundError

__all__ = [
    "GROUP",
    "REQUIRED",
    "OptionSpec",
    "available_segmenters",
    "get_segmenter",
    "load_factory",
    "segmenter_options_schema",
]

GROUP = "blockbuster.segmenters"

#: The ``default`` of an :class:`OptionSpec` for an option that must be given.
REQUIRED = inspect.Parameter.empty

_BUILTINS = {
    "threshold": "blockbuster.segmenters:threshold",
    "watershed": "blockbuster.segmenters:watershed",
}


class OptionSpec(NamedTuple):
    """One option of a segmenter factory: ``(default, annotation, doc)``.

    ``default`` is :data:`REQUIRED` for an option without a default; ``annotation`` is
    the type as written in the signature (``""`` when there is none); ``doc`` is the
    first sentence of the option's description in the factory's numpydoc docstring.
    """

    default: Any
    annotation: str
    doc: str


def _builtin_factory(name: str) -> Callable[..., Any]:
    if name == "threshold":
        from ._threshold import threshold

        return threshold
    from ._watershed import watershed

    return watershed


def available_segmenters() -> dict[str, EntryPoint | Callable[..., Any]]:
    """Registered segmenters, by name, sorted.

    Returns
    -------
    dict
        name -> the built-in factory (``threshold``, ``watershed``), or the
        :class:`importlib.metadata.EntryPoint` of a plugin (not loaded, so listing never
        imports heavy optional dependencies; :func:`load_factory` loads one).

    Examples
    --------
    >>> segs = available_segmenters()
    >>> callable(segs["threshold"])
    True
    """
    found: dict[str, EntryPoint | Callable[..., Any]] = {
        name: _builtin_factory(name) for name in _BUILTINS
    }
    for ep in entry_points(group=GROUP):
        if ep.name in found:
            continue  # built-ins cannot be overridden; first plugin of a name wins
        found[ep.name] = ep
    return dict(sorted(found.items()))


def _not_found(name: str, names: list[str]) -> SegmenterNotFoundError:
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return SegmenterNotFoundError(
        f"no segmenter named {name!r} is registered (entry point group {GROUP!r}).{hint} "
        f"Available: {', '.join(names) or 'none'}. A package adds one with an entry point "
        f"in the {GROUP!r} group."
    )


def load_factory(name: str) -> Callable[..., Any]:
    """The factory registered as ``name`` (imported if it is a plugin).

    Raises
    ------
    SegmenterNotFoundError
        When nothing is registered under ``name``, or its plugin cannot be imported
        (the message says which optional dependency is missing; the import error is
        chained).
    """
    if not isinstance(name, str):
        raise InvalidParameterError(
            f"segmenter={name!r} must be the name of a registered segmenter (a string), "
            f"e.g. 'watershed'"
        )
    segs = available_segmenters()
    if name not in segs:
        raise _not_found(name, list(segs))
    entry = segs[name]
    if callable(entry):
        # a built-in factory; anything with .load() is an entry point (of
        # importlib.metadata or of the importlib_metadata backport some packages use)
        return entry
    try:
        factory = entry.load()
    except Exception as exc:  # ImportError of an optional dependency, mostly
        extra = f" (pip install 'blockbuster[{name}]')" if name == "cellpose" else ""
        raise SegmenterNotFoundError(
            f"segmenter {name!r} is registered ({entry.value}) but cannot be loaded: "
            f"{type(exc).__name__}: {exc}. Install its dependencies{extra}."
        ) from exc
    if not callable(factory):
        raise SegmenterNotFoundError(
            f"segmenter {name!r} is registered as {entry.value}, which is not callable"
        )
    return factory


def _parameters(factory: Callable[..., Any]) -> tuple[dict[str, inspect.Parameter], bool]:
    """Keyword-passable parameters of ``factory`` and whether it takes ``**kwargs``."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return {}, True
    params: dict[str, inspect.Parameter] = {}
    var_kw = False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            params[p.name] = p
    return params, var_kw


def get_segmenter(name: str, **options: Any) -> Callable[..., Any]:
    """Build the registered segmenter ``name`` with ``options``.

    Parameters
    ----------
    name : str
        A registered name (see :func:`available_segmenters`).
    **options
        Keyword options of its factory (see :func:`segmenter_options_schema`).

    Returns
    -------
    callable
        The segmenter: ``seg(tile) -> labels``, picklable.

    Raises
    ------
    SegmenterNotFoundError
        ``name`` is not registered (a ``LookupError``; the message lists what is).
    InvalidParameterError
        An option is not on the factory's allow-list (its named parameters, plus the
        names in its ``extra_options`` attribute: a ``**kwargs`` never switches the
        check off), a required one is missing, or a value is unusable (a
        ``ValueError``; the message names the option and lists the accepted ones).

    Examples
    --------
    >>> get_segmenter("threshold", min_size=10).min_size
    10
    >>> get_segmenter("threshold", min_sise=10)
    Traceback (most recent call last):
    ...
    blockbuster.errors.InvalidParameterError: segmenter 'threshold' does not accept the option 'min_sise' (did you mean 'min_size'?); accepted options: threshold, smooth_sigma, min_size, connectivity, channel_axis, channel
    """
    factory = load_factory(name)
    params, _ = _parameters(factory)
    # an allow-list, also for a factory taking **kwargs: its named parameters plus the
    # names it lists in ``extra_options`` (cellpose: the CellposeModel.eval options)
    accepted = list(params) + [k for k in getattr(factory, "extra_options", ()) if k not in params]
    unknown = [k for k in options if k not in accepted]
    if unknown:
        bad = unknown[0]
        close = difflib.get_close_matches(bad, accepted, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        others = (
            f" (also not accepted: {', '.join(map(repr, unknown[1:]))})"
            if len(unknown) > 1
            else ""
        )
        raise InvalidParameterError(
            f"segmenter {name!r} does not accept the option {bad!r}{hint}{others}; "
            f"accepted options: {', '.join(accepted) or 'none'}"
        )
    missing = [k for k, p in params.items() if p.default is p.empty and k not in options]
    if missing:
        raise InvalidParameterError(
            f"segmenter {name!r} needs the option(s) {', '.join(map(repr, missing))}; "
            f"accepted options: {', '.join(params)}"
        )
    try:
        return factory(**options)
    except InvalidParameterError:
        raise
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(
            f"segmenter {name!r} rejected its options {options!r}: {exc}"
        ) from exc


_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "cf.", "vs.", "approx.")


def _first_sentence(text: str) -> str:
    """Text up to the first full stop outside brackets that ends a sentence.

    >>> _first_sentence('A name ("a", "b", ...). More.')
    'A name ("a", "b", ...).'
    >>> _first_sentence("Stitch threshold (see docs; e.g. 0.5). Details")
    'Stitch threshold (see docs; e.g. 0.5).'
    """
    depth = 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif ch == "." and depth == 0:
            end = i + 1
            if end < len(text) and not text[end].isspace():
                continue  # 1.5, module.name
            if text[:end].lower().endswith(_ABBREVIATIONS) or text[:end].endswith(".."):
                continue
            return text[:end]
    return text


def _param_docs(doc: str | None) -> dict[str, str]:
    """Option name -> first sentence of its description, from a numpydoc docstring."""
    if not doc:
        return {}
    doc = inspect.cleandoc(doc)
    lines = doc.splitlines()
    out: dict[str, str] = {}
    in_params = False
    current: list[str] | None = None
    names: list[str] = []

    def flush() -> None:
        if current is not None and names:
            sentence = _first_sentence(" ".join(s.strip() for s in current).strip())
            for n in names:
                out[n] = sentence

    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if re.fullmatch(r"-{3,}", nxt.strip()) and line.strip():
            flush()
            current, names = None, []
            in_params = line.strip() in ("Parameters", "Other Parameters")
            i += 2
            continue
        if in_params:
            if line and not line[0].isspace():
                flush()
                head = line.split(":", 1)[0]
                names = [n.strip().lstrip("*") for n in head.split(",") if n.strip()]
                current = []
            elif current is not None and line.strip():
                current.append(line)
        i += 1
    flush()
    return out


def _annotation(p: inspect.Parameter) -> str:
    if p.annotation is p.empty:
        return ""
    if isinstance(p.annotation, str):
        return p.annotation
    return inspect.formatannotation(p.annotation)


def segmenter_options_schema(name: str) -> dict[str, OptionSpec]:
    """The options of a registered segmenter, for help texts and forms.

    Derived from the factory's signature (defaults, annotations) and its numpydoc
    ``Parameters`` section (the first sentence of each description). A factory's
    ``**kwargs`` (passed on to something else, as cellpose's ``eval`` options) is not
    listed.

    Parameters
    ----------
    name : str
        A registered segmenter name.

    Returns
    -------
    dict of str -> OptionSpec
        In signature order; each an ``(default, annotation, doc)`` named tuple, with
        ``default`` :data:`REQUIRED` for a required option.

    Examples
    --------
    >>> schema = segmenter_options_schema("watershed")
    >>> list(schema)[:3]
    ['threshold', 'smooth_sigma', 'min_distance']
    >>> schema["smooth_sigma"].default, schema["smooth_sigma"].annotation
    (0.5, 'float | tuple[float, ...]')
    """
    factory = load_factory(name)
    params, _ = _parameters(factory)
    docs = _param_docs(inspect.getdoc(factory))
    return {k: OptionSpec(p.default, _annotation(p), docs.get(k, "")) for k, p in params.items()}

"""Object stores: images, outputs and staging at URLs (``s3://``, ``gs://``, ``az://``,
``http(s)://`` for reading), through zarr's own :class:`zarr.storage.ObjectStore`
backed by `obstore <https://developmentseed.org/obstore/>`_.

Why obstore and not fsspec (s3fs): on the same S3 server (moto, 127.0.0.1) zarr-python
wrote 256 chunks of 128x128 uint16 in 1.26-1.33 s through ``ObjectStore`` against
2.20-2.50 s through ``FsspecStore``, and read them back in 1.19-1.25 s against
4.11-5.50 s (``docs/benchmarks.md``). obstore is one self-contained wheel (no
aiobotocore/botocore pins) that speaks S3, GCS, Azure and HTTP.

Credentials and endpoints come from each cloud SDK's standard environment (for S3:
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_ENDPOINT_URL``, ``AWS_REGION``), read by obstore in each process that opens the
store (so Dask workers use their own environment), or from ``storage_options`` given to
the API (:func:`set_storage_options`: kept per process, sent to Dask workers by a worker
plugin, :class:`blockbuster.cluster.StorageOptionsPlugin`; never put in a task's
arguments, a run key, a log line or an error message).
An endpoint given as ``http://`` (a local test server, an on-premises gateway) is
allowed over plain HTTP.

Everything here is keyed by the URL string; a local path never reaches this module
(:func:`is_url` decides, and the fsspec chaining syntax ``::`` is never interpreted).

Examples
--------
>>> is_url("s3://bucket/image.zarr"), is_url("/data/image.zarr"), is_url("file:///x")
(True, False, False)
>>> split_url("s3://bucket/a/b.zarr/")
('s3', 'bucket', 'a/b.zarr')
>>> join_url("s3://bucket/a", "labels/cells")
's3://bucket/a/labels/cells'
>>> redact("https://user:secret@example.org/x.zarr")
'https://***@example.org/x.zarr'
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Sequence
from typing import Any

from blockbuster.errors import DependencyMissingError, InputError, InvalidParameterError

__all__ = [
    "URL_SCHEMES",
    "is_url",
    "split_url",
    "join_url",
    "parent_url",
    "redact",
    "set_storage_options",
    "storage_options_for",
    "object_store",
    "zarr_store",
    "read_bytes",
    "write_bytes",
    "head",
    "list_prefix",
    "delete_prefix",
    "check_url",
    "zarr_location",
    "exists",
    "is_prefix",
    "read_range",
    "read_ranges",
    "all_storage_options",
]

#: Schemes accepted; ``http``/``https`` are read-only.
URL_SCHEMES = ("s3", "gs", "gcs", "az", "abfs", "abfss", "azure", "http", "https")
READ_ONLY_SCHEMES = ("http", "https")
_URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")


def is_url(path: Any) -> bool:
    """True when ``path`` is a string with a URL scheme other than ``file://``."""
    if not isinstance(path, str):
        return False
    m = _URL_RE.match(path)
    return m is not None and m.group(1).lower() != "file"


def split_url(url: str) -> tuple[str, str, str]:
    """``(scheme, bucket, key prefix)`` of a URL, the prefix without slashes at its ends.

    Raises
    ------
    InvalidParameterError
        The scheme is not one of :data:`URL_SCHEMES`, or the URL names no bucket.
    """
    m = _URL_RE.match(url)
    if not m:
        raise InvalidParameterError(f"{redact(url)!r} is not a URL")
    scheme = m.group(1).lower()
    if scheme not in URL_SCHEMES:
        raise InvalidParameterError(
            f"{redact(url)!r}: the scheme {scheme}:// is not supported; use a local path or "
            f"one of {', '.join(s + '://' for s in URL_SCHEMES)}"
        )
    rest = m.group(2)
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise InvalidParameterError(f"{redact(url)!r} names no bucket (or host)")
    return scheme, bucket, prefix.strip("/")


def join_url(url: str, sub: str | None) -> str:
    """``url`` + ``/`` + ``sub`` (``sub`` relative, with ``/`` separators)."""
    sub = (sub or "").strip("/")
    return url.rstrip("/") + "/" + sub if sub else url.rstrip("/")


def parent_url(url: str) -> str:
    """The URL one level up (``s3://b/a/x`` -> ``s3://b/a``)."""
    scheme, bucket, prefix = split_url(url)
    head = f"{scheme}://{bucket}"
    return join_url(head, prefix.rpartition("/")[0])


def redact(url: str) -> str:
    """``url`` with any ``user:password@`` part masked (safe to log)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1***@", str(url))


# --------------------------------------------------------------------------------------
# storage options: per process, never in task arguments or logs
# --------------------------------------------------------------------------------------
_OPTIONS: dict[str, dict[str, Any]] = {}
_OPTIONS_LOCK = threading.Lock()


def set_storage_options(prefix: str, options: dict[str, Any] | None) -> None:
    """Use ``options`` (obstore config keys, e.g. ``aws_access_key_id``, ``endpoint``,
    ``region``; or ``client_options``/``retry_config`` dicts) for every URL that starts
    with ``prefix`` in this process (the longest matching prefix wins); ``None``
    forgets them."""
    with _OPTIONS_LOCK:
        if options is None:
            _OPTIONS.pop(prefix, None)
        else:
            if not isinstance(options, dict):
                raise InvalidParameterError(
                    "storage_options must be a dict of obstore settings, e.g. "
                    "{'endpoint': 'http://127.0.0.1:9000', 'region': 'us-east-1'}"
                )
            _OPTIONS[prefix] = dict(options)
        _store_cache.clear()


def storage_options_for(url: str) -> dict[str, Any]:
    """The options :func:`set_storage_options` gave for the longest prefix of ``url``."""
    with _OPTIONS_LOCK:
        best = max((p for p in _OPTIONS if url.startswith(p)), key=len, default=None)
        return dict(_OPTIONS[best]) if best is not None else {}


def all_storage_options() -> dict[str, dict[str, Any]]:
    """Every prefix's options (to hand to :class:`StorageOptionsPlugin`)."""
    with _OPTIONS_LOCK:
        return {k: dict(v) for k, v in _OPTIONS.items()}


# --------------------------------------------------------------------------------------
# opening stores
# --------------------------------------------------------------------------------------
_store_cache: dict[tuple, Any] = {}
_store_lock = threading.Lock()


def _obstore() -> Any:
    try:
        import obstore  # noqa: F401
        import obstore.store
    except ImportError as exc:  # pragma: no cover - obstore is a dependency
        raise DependencyMissingError(
            "reading or writing URLs needs obstore: pip install obstore"
        ) from exc
    return obstore


def object_store(url: str, *, retries: int | None = None) -> Any:
    """The obstore store rooted at ``url`` (bucket + key prefix), cached per process.

    ``retries`` overrides the number of retries (a short preflight check uses few)."""
    import os

    scheme, bucket, prefix = split_url(url)
    opts = storage_options_for(url)
    key = (
        url.rstrip("/"),
        retries,
        os.getpid(),
        hashlib.sha256(json.dumps(opts, sort_keys=True, default=str).encode()).hexdigest(),
    )
    with _store_lock:
        hit = _store_cache.get(key)
    if hit is not None:
        return hit
    obstore = _obstore()
    client_options = dict(opts.pop("client_options", {}) or {})
    retry_config = dict(opts.pop("retry_config", {}) or {})
    endpoint = (
        opts.get("endpoint")
        or opts.get("aws_endpoint")
        or opts.get("endpoint_url")
        or (os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT"))
        if scheme == "s3"
        else opts.get("endpoint")
    )
    if "endpoint_url" in opts:  # the boto / fsspec spelling
        opts["endpoint"] = opts.pop("endpoint_url")
    if (endpoint and str(endpoint).startswith("http://")) or scheme == "http":
        client_options.setdefault("allow_http", True)
    if retries is not None:
        from datetime import timedelta

        retry_config = {
            **retry_config,
            "max_retries": retries,
            "retry_timeout": timedelta(seconds=10),
        }
    kwargs: dict[str, Any] = {}
    if client_options:
        kwargs["client_options"] = client_options
    if retry_config:
        kwargs["retry_config"] = retry_config
    base = f"{scheme}://{bucket}" + (f"/{prefix}" if prefix else "")
    try:
        store = obstore.store.from_url(base, config=opts or None, **kwargs)
    except Exception as exc:
        raise InvalidParameterError(
            f"{redact(url)!r}: cannot configure the object store ({type(exc).__name__}: "
            f"{_scrub(exc, opts)}); check the URL and storage_options"
        ) from None
    with _store_lock:
        _store_cache[key] = store
        if len(_store_cache) > 64:
            _store_cache.pop(next(iter(_store_cache)))
    return store


def zarr_store(url: str, *, read_only: bool = True) -> Any:
    """A :class:`zarr.storage.ObjectStore` rooted at ``url`` (pass it as ``store=``)."""
    from zarr.storage import ObjectStore

    scheme = split_url(url)[0]
    if not read_only and scheme in READ_ONLY_SCHEMES:
        raise InvalidParameterError(
            f"{redact(url)!r}: {scheme}:// URLs are read-only; write to s3://, gs://, az:// "
            "or a local path"
        )
    return ObjectStore(object_store(url), read_only=read_only)


def _scrub(exc: BaseException, opts: dict | None = None) -> str:
    """One line of an error, with any configured secret value removed."""
    text = " ".join(str(exc).split())
    text = re.sub(r"<\?xml.*$", "", text)  # the server's XML body
    for v in (opts or {}).values():
        if isinstance(v, str) and len(v) >= 6:
            text = text.replace(v, "***")
    return text[:300]


def _split_key(url: str) -> tuple[Any, str]:
    """(store of the URL's parent prefix, last key part), so one cached store serves
    every object of a folder."""
    scheme, bucket, prefix = split_url(url)
    parent, _, name = prefix.rpartition("/")
    return object_store(join_url(f"{scheme}://{bucket}", parent)), name


def read_bytes(url: str) -> bytes | None:
    """The object at ``url``, or None when there is none."""
    obstore = _obstore()
    store, name = _split_key(url)
    try:
        return bytes(obstore.get(store, name).bytes())
    except FileNotFoundError:
        return None


def read_range(url: str, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of the object at ``url``."""
    obstore = _obstore()
    store, name = _split_key(url)
    return bytes(obstore.get_range(store, name, start=start, end=end))


def read_ranges(url: str, starts: Sequence[int], ends: Sequence[int]) -> list[bytes]:
    """Bytes ``[starts[i], ends[i])`` of the object at ``url``, for every ``i``: ranges
    less than 1 MiB apart are fetched as one request, up to 10 requests in flight
    (obstore's ``get_ranges``)."""
    if not starts:
        return []
    obstore = _obstore()
    store, name = _split_key(url)
    got = obstore.get_ranges(store, name, starts=list(starts), ends=list(ends))
    return [bytes(b) for b in got]


def write_bytes(url: str, data: bytes) -> None:
    """Put one object (one PUT: objects appear whole or not at all)."""
    obstore = _obstore()
    store, name = _split_key(url)
    obstore.put(store, name, data)


def head(url: str) -> dict[str, Any] | None:
    """The object's metadata (``size``, ``e_tag``, ``last_modified``) or None."""
    obstore = _obstore()
    store, name = _split_key(url)
    try:
        return dict(obstore.head(store, name))
    except FileNotFoundError:
        return None


def list_prefix(url: str, *, recursive: bool = False) -> tuple[list[str], list[dict]]:
    """``(sub-prefixes, objects)`` directly under ``url`` (every object below it when
    ``recursive``); object paths are relative to ``url``."""
    obstore = _obstore()
    store = object_store(url)
    if recursive:
        objs: list[dict] = []
        for batch in obstore.list(store):
            objs.extend(dict(o) for o in batch)
        return [], objs
    res = obstore.list_with_delimiter(store)
    return [p.rstrip("/") for p in res["common_prefixes"]], [dict(o) for o in res["objects"]]


def delete_prefix(url: str) -> int:
    """Delete every object under ``url``; returns how many."""
    obstore = _obstore()
    store = object_store(url)
    paths = [o["path"] for o in list_prefix(url, recursive=True)[1]]
    for i in range(0, len(paths), 1000):
        obstore.delete(store, paths[i : i + 1000])
    return len(paths)


def check_url(url: str, *, what: str, write: bool = False) -> None:
    """Fail early, with one clear error naming ``url``, when its store cannot be used:
    a missing bucket, refused credentials, an unreachable endpoint. Writes nothing (a
    write check lists the prefix, which needs the same bucket and credentials).

    Raises
    ------
    InputError
        ``what`` (e.g. ``"image"``, ``"write_to"``) cannot be reached at ``url``.
    """
    obstore = _obstore()
    store = object_store(url, retries=1)
    scheme = split_url(url)[0]
    try:
        if scheme in READ_ONLY_SCHEMES:
            return
        obstore.list_with_delimiter(store)
    except Exception as exc:
        text = str(exc)
        if "NoSuchBucket" in text:
            why = "the bucket does not exist"
        elif any(
            s in text
            for s in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403")
        ):
            why = "the credentials were refused (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or storage_options)"
        elif "error sending request" in text or "Connect" in text or "connection" in text:
            why = "the endpoint cannot be reached (check AWS_ENDPOINT_URL or storage_options)"
        else:
            why = _scrub(exc, storage_options_for(url))
        raise InputError(f"{what} {redact(url)!r}: {why}; nothing was written") from None


def zarr_location(path: str, mode: str = "r") -> Any:
    """What to pass to zarr as ``store=`` for ``path``: the path itself when local, a
    :class:`zarr.storage.ObjectStore` when a URL (read-only when ``mode == "r"``)."""
    if is_url(path):
        return zarr_store(path, read_only=mode == "r")
    return path


def exists(url: str) -> bool:
    """An object exists at ``url``."""
    return head(url) is not None


def is_prefix(url: str) -> bool:
    """Some object exists below ``url/`` (an object store's idea of a folder)."""
    obstore = _obstore()
    store = object_store(url)
    for batch in obstore.list(store, chunk_size=1):
        if batch:
            return True
    return False


def tree_stamp_url(url: str) -> dict[str, Any]:
    """Stamp every object under ``url`` (the URL counterpart of
    :func:`blockbuster.io.tree_stamp`): count, bytes and a digest of the sorted
    ``(key, size, ETag)`` of every object, so a chunk rewritten in place is seen."""
    import xxhash

    objs = sorted(
        (o["path"], int(o["size"]), str(o.get("e_tag")))
        for o in list_prefix(url, recursive=True)[1]
    )
    h = xxhash.xxh3_128()
    for key, size, tag in objs:
        h.update(f"{key}\0{size}\0{tag}\n".encode())
    return {"files": len(objs), "bytes": sum(s for _, s, _ in objs), "digest": h.hexdigest()}

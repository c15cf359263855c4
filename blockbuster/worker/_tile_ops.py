"""What runs on the workers: segment, scan and relabel a batch of tiles.

Each function takes the run's :class:`~blockbuster.core.RunPlan` and a list of tile
numbers, does the work of each tile independently and returns small per-tile results.
They are plain functions (no Prefect, no Dask): the orchestration layer decides where
and how often they run. Segmentation is idempotent per tile: a tile whose staging
record is complete is finished and is never given to ``fn`` again.
"""

from __future__ import annotations

import functools
import os
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from blockbuster.core import (
    MergeTable,
    RunPlan,
    band_key,
    check_tile_labels,
    compact_labels,
    compact_with_halo,
    face_key,
    index_unit,
    input_changed,
    map_through,
    overlap_pairs,
    present_ids,
    relabel_unit,
    seam_rows,
    touch_pairs,
    unit_samples,
)
from blockbuster.core._labels import _map_ids, _small_uint
from blockbuster.errors import BlockbusterError, TileFunctionError
from blockbuster.io import (
    ShardWriter,
    Staging,
    chunk_files,
    full_slices,
    open_zarr_array_cached,
    write_regions,
)

from ._gpu_memory import free_gpu_cache, gpu_free_bytes, is_cuda_oom
from ._memory import Scratch, keep_freed_memory
from ._pictures import sample_tile

__all__ = ["segment_tiles", "scan_tiles", "relabel_tiles", "call_fn", "PREVIEW_FIELD"]

#: a record's key holding its tile's image samples for the run's preview, ``(at, pixels)``
#: (:func:`sample_tile`): returned with the record, never staged
PREVIEW_FIELD = "_preview"

# output chunks of a relabel batch are written together, up to this many bytes at once
WRITE_GROUP_BYTES = 64 << 20
# per-thread work buffers for the input and output of one tile (core/scratch.py)
_SCRATCH = Scratch()


def _batch(fn):
    """A batch function runs with freed memory kept for its next tile (core/scratch.py)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with keep_freed_memory():
            return fn(*args, **kwargs)

    return run


def call_fn(fn: Callable, data: np.ndarray, tile: int, origin, retries: int, retry_delay: float):
    """Call ``fn(data)``, retrying exceptions ``retries`` times with a delay.

    Returns ``(labels, seconds_of_the_successful_call, attempts)``. The final failure
    is a :class:`TileFunctionError` naming the tile, its origin and the original error
    (with the worker-side traceback in the message, since a chained cause does not
    survive the trip between processes).

    A CUDA out-of-memory error is not retried as it was: PyTorch's cache is freed and
    the call is made again with ``fn.with_smaller_batch()`` while the function offers a
    smaller batch (once more as is, after freeing, when it offers none); then the tile
    fails with the GPU memory it needed (module :mod:`._gpu_memory`).
    """
    attempts = 0
    oom: list[str] = []  # what each out-of-memory attempt ran with
    while True:
        attempts += 1
        t0 = time.perf_counter()
        try:
            out = fn(data)
            return out, time.perf_counter() - t0, attempts
        except Exception as exc:  # noqa: BLE001 - any error of user code
            if is_cuda_oom(exc):
                free_gpu_cache()
                oom.append(str(getattr(fn, "batch_size", "?")))
                smaller = getattr(fn, "with_smaller_batch", None)
                nxt = smaller() if callable(smaller) else None
                if nxt is not None:
                    fn = nxt
                    continue
                if len(oom) == 1 and not callable(smaller):
                    continue  # once more with the cache freed
                raise TileFunctionError(
                    _oom_message(fn, data, tile, origin, oom, exc), tile, tuple(origin)
                ) from exc
            # our own errors (a missing model, no GPU, a bad option) are permanent
            if attempts <= retries and not isinstance(exc, BlockbusterError):
                time.sleep(retry_delay * attempts)
                continue
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            raise TileFunctionError(
                f"fn failed on tile {tile} (origin {tuple(origin)}, input shape {data.shape}) "
                f"after {attempts} attempt(s): {type(exc).__name__}: {exc}\n"
                f"--- traceback in the worker ---\n{tb}",
                tile,
                tuple(origin),
            ) from exc


def _oom_message(fn, data: np.ndarray, tile: int, origin, tried: list[str], exc) -> str:
    """Tile ``tile`` does not fit in GPU memory: how much it needed, what is free, the fix."""
    from blockbuster.core import (
        DEFAULT_GPU_MEMORY_FACTOR,
        DEFAULT_GPU_MODEL_BYTES,
        GpuMemoryHinted,
        GpuModelSized,
    )

    factor = float(
        fn.gpu_memory_factor if isinstance(fn, GpuMemoryHinted) else DEFAULT_GPU_MEMORY_FACTOR
    )
    model = int(fn.gpu_model_bytes if isinstance(fn, GpuModelSized) else DEFAULT_GPU_MODEL_BYTES)
    need = data.nbytes * factor + model
    mem = gpu_free_bytes()
    have = (
        f"{mem[0] / 2**30:.1f} GiB of {mem[1] / 2**30:.1f} GiB free on this GPU now"
        if mem
        else "free GPU memory unknown"
    )
    return (
        f"fn ran out of GPU memory on tile {tile} (origin {tuple(origin)}, input shape "
        f"{data.shape}, {data.nbytes / 2**20:.0f} MiB) in {len(tried)} attempt(s) (batch "
        f"sizes {', '.join(tried)}), the cache freed before each retry. The tile needs "
        f"about {need / 2**30:.1f} GiB of GPU memory ({factor:g} x the tile's bytes + "
        f"{model / 2**30:.1f} GiB for the model); {have}. Use a smaller tile_shape (or "
        f"tile_shape='auto'), or fewer workers per GPU. CUDA said: {type(exc).__name__}: "
        f"{str(exc)[:500]}"
    )


def _band_bounds(plan: RunPlan, n: int, axis: int, hi: bool):
    g = plan.grid
    ext, core = g.ext_bounds(n), g.core_bounds(n)
    ov = g.overlap[axis]
    box = list(ext)
    e0, e1 = ext[axis]
    box[axis] = (max(core[axis][1] - ov, e0), e1) if hi else (e0, min(core[axis][0] + ov, e1))
    return tuple(box)


def _is_empty(plan: RunPlan, data: np.ndarray, n: int) -> bool:
    core = full_slices(plan.grid.core_in_ext(n), plan.channel_axis)
    thr = plan.empty_threshold if plan.empty_threshold is not None else 0
    region = data[core]
    return region.size == 0 or not bool((region > thr).any())


def _new_record(plan: RunPlan, n: int) -> dict[str, Any]:
    """The staging record of tile (or merge unit) ``n`` before any work on it."""
    g = plan.grid
    return {
        "tile": n,
        "index": list(g.tile_index(n)),
        "origin": list(g.origin(n)),
        "shape": list(g.core_shape(n)),
        "n_labels": 0,
        "fn_seconds": 0.0,
        "skipped": False,
        "attempts": 0,
        "resumed": False,
        "pid": os.getpid(),
    }


def _skip(plan: RunPlan, n: int, staging: Staging) -> dict[str, Any]:
    """Stage tile ``n`` as skipped (empty): finished, no labels, ``fn`` never called."""
    rec = _new_record(plan, n)
    rec["skipped"] = True
    staging.write_tile(n, rec)
    return rec


@_batch
def empty_tiles(
    plan: RunPlan,
    tiles: Sequence[int],
    reader,
    preview: tuple[int, int | None] | None = None,
) -> list[bool] | tuple[list[bool], list[tuple[int, tuple[int, ...], np.ndarray]]]:
    """Whether each tile's core holds no pixel above the run's empty threshold (the
    estimate-empty stage; the segment stage then never reads those tiles).

    ``preview``: ``(step, plane)`` of the run's preview: returns ``(flags, samples)``,
    the image samples ``(tile, at, pixels)`` of the empty tiles (the segment stage, which
    never reads them, samples the others)."""
    thr = plan.empty_threshold if plan.empty_threshold is not None else 0
    out = []
    samples = []
    for n in tiles:
        core = reader.read(_core_region(plan, n))
        empty = core.size == 0 or not bool((core > thr).any())
        out.append(empty)
        if empty and preview is not None:
            got = sample_tile(
                plan.grid.core_bounds(n), preview, core, channel_axis=plan.channel_axis
            )
            if got is not None:
                samples.append((n, *got))
    return out if preview is None else (out, samples)


def segment_one(
    plan: RunPlan,
    fn: Callable,
    n: int,
    data: np.ndarray,
    staging: Staging,
    preview: tuple[int, int | None] | None = None,
) -> dict[str, Any]:
    """Segment tile ``n`` from its extended ``data``; stage it; return its record (with
    the tile's image samples for the preview when ``preview`` is given)."""
    rec, labels = _run_fn(plan, fn, n, data)
    if labels is None:
        out = _skip(plan, n, staging)
    else:
        out = _stage_labels(plan, fn, n, rec, labels, staging)
    return _with_samples(plan, n, data, out, preview)


def _with_samples(
    plan: RunPlan,
    n: int,
    data: np.ndarray,
    rec: dict[str, Any],
    preview: tuple[int, int | None] | None,
) -> dict[str, Any]:
    """``rec`` (already staged) with tile ``n``'s image samples under
    :data:`PREVIEW_FIELD`, taken from its extended ``data`` in memory."""
    if preview is not None:
        g = plan.grid
        got = sample_tile(
            g.core_bounds(n),
            preview,
            data,
            origin=[lo for lo, _ in g.ext_bounds(n)],
            channel_axis=plan.channel_axis,
        )
        if got is not None:
            rec[PREVIEW_FIELD] = got
    return rec


def _run_fn(
    plan: RunPlan, fn: Callable | None, n: int, data: np.ndarray
) -> tuple[dict[str, Any], np.ndarray | None]:
    """The first half of :func:`segment_one`: ``fn`` on tile ``n`` (labels None: the
    tile is empty and skipped)."""
    rec = _new_record(plan, n)
    if plan.skip_empty and _is_empty(plan, data, n):
        return rec, None
    if fn is None:  # merging labels the user already has
        return rec, data
    rec["fn_started"] = time.time()  # wall clock: lines tiles up with outside samples
    labels, secs, attempts = call_fn(
        fn, data, n, plan.grid.origin(n), plan.retries, plan.retry_delay
    )
    rec["fn_seconds"], rec["attempts"] = secs, attempts
    return rec, labels


def _stage_labels(
    plan: RunPlan,
    fn: Callable | None,
    n: int,
    rec: dict[str, Any],
    labels: np.ndarray,
    staging: Staging,
) -> dict[str, Any]:
    """The second half of :func:`segment_one`: check, compact and stage ``labels``."""
    g = plan.grid
    origin = g.origin(n)
    labels = check_tile_labels(labels, g.ext_shape(n), n, origin)
    if plan.read_back and fn is None:
        return _index_one(plan, n, labels, rec, staging)
    crop = g.core_in_ext(n)
    arrays: dict[str, np.ndarray] = {}
    if plan.merge == "overlap":
        ids = present_ids(labels)
        ext_c, n_core = compact_with_halo(labels, crop, dtype=_small_uint(ids.size), ids=ids)
        core_c = ext_c[crop]
    else:
        core_c, n_core = compact_labels(labels[crop], small=True)
    rec["n_labels"] = int(n_core)
    if n_core:
        arrays["labels"] = core_c
        for d in range(g.ndim):
            for hi in (False, True):
                arrays[face_key(d, hi)] = core_c.take(-1 if hi else 0, axis=d)
        if plan.merge == "overlap":
            e0 = [lo for lo, _ in g.ext_bounds(n)]
            bounds = {}
            for d in range(g.ndim):
                if g.overlap[d] == 0:
                    continue
                for hi in (False, True):
                    box = _band_bounds(plan, n, d, hi)
                    key = band_key(d, hi)
                    arrays[key] = ext_c[
                        tuple(slice(b0 - o, b1 - o) for (b0, b1), o in zip(box, e0))
                    ]
                    bounds[key] = [list(b) for b in box]
            rec["band_bounds"] = bounds
    staging.write_tile(n, rec, arrays)
    return rec


def _index_one(
    plan: RunPlan, n: int, labels: np.ndarray, rec: dict[str, Any], staging: Staging
) -> dict[str, Any]:
    """Stage what the merge needs of stored labels, not the labels: relabel reads them
    again from the input (``plan.read_back``).

    Staged: the ids present (only when they are not exactly 1..n) and the compacted
    boundary faces for the seam scan. This spares a compressed copy of every tile
    (writing it, reading it back) for the price of reading the input chunk twice.
    """
    g = plan.grid
    ids = present_ids(labels)
    k = int(ids.size)
    rec["n_labels"] = k
    arrays: dict[str, np.ndarray] = {}
    if k:
        identity = int(ids[-1]) == k  # ids are exactly 1..k already
        rec["ids_1_to_n"] = identity  # relabel then needs nothing staged
        small = _small_uint(k)
        if not identity:
            arrays["ids"] = ids
        local = np.arange(1, k + 1)
        for d in range(g.ndim):
            for hi in (False, True):
                face = labels.take(-1 if hi else 0, axis=d)
                arrays[face_key(d, hi)] = (
                    face.astype(small) if identity else _map_ids(face, ids, local, small)
                )
    staging.write_tile(n, rec, arrays)
    return rec


@_batch
def segment_tiles(
    plan: RunPlan,
    fn: Callable,
    tiles: Sequence[int],
    reader=None,
    datas: Sequence[np.ndarray] | None = None,
    empty: Sequence[bool] | None = None,
    preview: tuple[int, int | None] | None = None,
) -> list[dict[str, Any]]:
    """Segment a batch of tiles, skipping those already finished (resume) and those the
    estimate-empty stage found empty (``empty``: one flag per tile; they are staged as
    skipped without being read). ``preview``: ``(step, plane)`` of the run's preview:
    each tile read here returns its image samples with its record
    (:data:`PREVIEW_FIELD`; not for merges, whose input is labels)."""
    staging = Staging(plan.staging_root, durable=plan.durable, generation=plan.staging_generation)
    out = []
    todo = []
    skipped: list[int] = []
    finished = staging.finished_in(tiles)  # a rerun batch skips what it finished
    for i, n in enumerate(tiles):
        if n in finished:
            rec = staging.read_record(n)
            rec["resumed"] = True
            out.append(rec)
        elif empty is not None and empty[i]:
            skipped.append(n)
        else:
            todo.append((i, n))
    if skipped:
        with staging:
            out.extend(_skip(plan, n, staging) for n in skipped)
    if plan.unit_tile_shape is not None:  # merge units of small stored tiles
        try:
            with staging:
                for _, n in todo:
                    out.append(_index_unit(plan, n, reader, staging))
        finally:
            _SCRATCH.clear()
        return out
    if datas is not None:
        inputs = (np.asarray(datas[i]) for i, _ in todo)
    elif plan.read_back and fn is None:
        # nothing of the input outlives its tile: decode every tile into one buffer
        inputs = (
            reader.read(
                _core_region(plan, n),
                out=_SCRATCH.array("input", plan.grid.core_shape(n), _reader_dtype(reader)),
            )
            for _, n in todo
        )
    else:
        regions = [full_slices(plan.grid.ext_slices(n), plan.channel_axis) for _, n in todo]
        read_many = getattr(reader, "read_many", None)
        inputs = read_many(regions) if read_many is not None else (reader.read(r) for r in regions)
    try:
        with staging:
            if fn is None:
                preview = None  # a merge's input is labels: the relabel stage samples them
            if fn is not None and _uses_gpu(fn) and len(todo) > 1:
                out.extend(_segment_pipelined(plan, fn, todo, inputs, staging, preview))
            else:
                for (_, n), data in zip(todo, inputs):
                    out.append(segment_one(plan, fn, n, np.asarray(data), staging, preview))
    finally:
        _SCRATCH.clear()
    return out


#: Tiles read ahead of the GPU, and staged tiles written behind it, per batch.
READ_AHEAD = 2
WRITE_BEHIND = 2


def _uses_gpu(fn: Callable) -> bool:
    try:
        return bool(getattr(fn, "uses_gpu", False))
    except Exception:
        return False


def _segment_pipelined(
    plan: RunPlan,
    fn: Callable,
    todo: list[tuple[int, int]],
    inputs,
    staging: Staging,
    preview: tuple[int, int | None] | None = None,
) -> list[dict[str, Any]]:
    """Keep a GPU busy: one thread reads and decodes the next tiles
    (:data:`READ_AHEAD`), this thread only calls ``fn``, and one thread checks, compacts
    and stages finished tiles (:data:`WRITE_BEHIND` at most waiting). Used for tile
    functions that declare ``uses_gpu``: a GPU worker's host has cores to spare for
    this, and the GPU would otherwise idle while a tile is read and staged."""
    import queue
    import threading
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    q: queue.Queue = queue.Queue(maxsize=READ_AHEAD)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for (_, n), data in zip(todo, inputs):
                if not put((n, np.asarray(data))):
                    return
            put(done)
        except BaseException as exc:  # raised in the batch's thread
            put(exc)

    reader = threading.Thread(target=read, name="blockbuster-read-ahead", daemon=True)
    reader.start()
    out: list[dict[str, Any]] = []
    pending: deque = deque()
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="blockbuster-write-behind") as writer:
            try:
                while True:
                    item = q.get()
                    if item is done:
                        break
                    if isinstance(item, BaseException):
                        raise item
                    n, data = item
                    rec, labels = _run_fn(plan, fn, n, data)
                    sampled = _with_samples(plan, n, data, {}, preview)
                    del data
                    if labels is None:
                        fut = writer.submit(_skip, plan, n, staging)
                    else:
                        fut = writer.submit(_stage_labels, plan, fn, n, rec, labels, staging)
                    pending.append((fut, sampled))
                    del labels
                    while len(pending) > WRITE_BEHIND:
                        f, sampled = pending.popleft()
                        out.append({**f.result(), **sampled})
                while pending:
                    f, sampled = pending.popleft()
                    out.append({**f.result(), **sampled})
            finally:
                for f, _ in pending:
                    f.cancel()
    finally:
        stop.set()
        reader.join()
    return out


class _TileReader:
    """``read(tile_bounds, out)``: fills ``out`` (the tiles' whole shape) with a tile of
    the input from its top corner; the tile's chunk file is decoded into ``out``
    directly when tiles are the input's chunks."""

    def __init__(self, plan: RunPlan, reader):
        self.reader = reader
        self.channel_axis = plan.channel_axis
        self.dtype = _reader_dtype(reader)
        files = getattr(reader, "chunk_files", None)
        cf = files() if files is not None and plan.channel_axis is None else None
        self.cf = cf if cf is not None and cf.chunks == plan.out_chunks else None

    def __call__(self, tb, out: np.ndarray) -> None:
        cf = self.cf
        if cf is not None:
            got = cf.read_chunk(tuple(a // c for (a, _), c in zip(tb, cf.chunks)), out=out)
            if got is not out:
                out[...] = got
            return
        region = full_slices(tuple(slice(a, b) for a, b in tb), self.channel_axis)
        out[tuple(slice(0, b - a) for a, b in tb)] = self.reader.read(region)

    def many(self, tiles: Sequence[tuple[tuple[int, int], ...]], out: np.ndarray) -> None:
        """Tiles ``tiles`` into ``out[i]`` (stacked, shape ``(n,) + tile shape``): their
        chunk files in one loop (:meth:`ChunkFiles.read_chunks`) when tiles are chunks."""
        cf = self.cf
        if cf is not None and out.dtype == cf.dtype:
            chunks = cf.chunks
            cf.read_chunks([tuple(a // c for (a, _), c in zip(tb, chunks)) for tb in tiles], out)
            return
        for tb, slot in zip(tiles, out):
            self(tb, slot)


def _index_unit(plan: RunPlan, n: int, reader, staging: Staging) -> dict[str, Any]:
    """Index merge unit ``n`` (core/units.py) and stage it; return its record."""
    g = plan.grid
    rec = _new_record(plan, n)
    fields, arrays = index_unit(
        g.core_bounds(n),
        plan.out_chunks,  # the tiles inside the unit
        plan.connectivity,
        _TileReader(plan, reader),
        n,
        _SCRATCH.array,
    )
    rec.update(fields)
    staging.write_tile(n, rec, arrays)
    return rec


def _core_region(plan: RunPlan, n: int) -> tuple[slice, ...]:
    return full_slices(plan.grid.core_slices(n), plan.channel_axis)


def _reader_dtype(reader) -> np.dtype:
    dtype = getattr(reader, "dtype", None)
    return np.dtype(dtype if dtype is not None else reader.array.dtype)


@_batch
def scan_tiles(
    plan: RunPlan, tiles: Sequence[int], counts: np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Seam pairs (global node ids) from each tile of the batch to its forward neighbours.

    Returns ``(pairs, seams)``: an ``(k, 2)`` int64 array and, per seam with any
    candidate, a row ``(tile_a, tile_b, delta, merged, unmerged, spanning)`` of
    :func:`~blockbuster.core.seam_dtype` (a structured array: ~31 bytes a seam in the
    driver, where a tuple took ~300).
    """
    staging = Staging(plan.staging_root, durable=plan.durable, generation=plan.staging_generation)
    g = plan.grid
    cache: dict[int, tuple] = {}

    def side(n):
        if n not in cache:
            cache[n] = staging.read_tile(n, names=keys)
        return cache[n]

    max_order = plan.connectivity if plan.merge == "touch" else None
    keys = []
    if plan.merge == "touch" or 0 in g.overlap:  # faces serve the touch seams only
        keys += [face_key(d, hi) for d in range(g.ndim) for hi in (False, True)]
    if plan.merge == "overlap":
        keys += [band_key(d, hi) for d in range(g.ndim) for hi in (False, True)]
    all_pairs = []
    seams = []
    with staging:  # packs stay open for the batch
        # every tile this batch compares, fetched ahead (few requests on an object store)
        staging.prefetch(
            (
                t
                for a in tiles
                if counts[a]
                for t in (a, *(b for b, _ in g.forward_neighbours(a, max_order=max_order)))
                if counts[t]
            ),
            keys,
        )
        for a in tiles:
            if counts[a] == 0:
                continue
            for b, delta in g.forward_neighbours(a, max_order=max_order):
                if counts[b] == 0:
                    continue
                rec_a, arr_a = side(a)
                rec_b, arr_b = side(b)
                nz = [e for e, d in enumerate(delta) if d]
                use_touch = plan.merge == "touch" or any(g.overlap[e] == 0 for e in nz)
                if use_touch:
                    p = touch_pairs(arr_a, arr_b, delta, plan.connectivity)
                    stats = {"candidates": len(p), "merged": len(p), "spanning": 0}
                else:
                    p, stats = overlap_pairs(
                        arr_a,
                        _bounds(rec_a),
                        int(counts[a]),
                        arr_b,
                        _bounds(rec_b),
                        int(counts[b]),
                        delta,
                        plan.iou_threshold,
                    )
                if len(p):
                    all_pairs.append(
                        np.stack([p[:, 0] + offsets[a], p[:, 1] + offsets[b]], axis=1)
                    )
                if stats["candidates"] or stats["spanning"]:
                    seams.append(
                        (
                            int(a),
                            int(b),
                            tuple(delta),
                            stats["merged"],
                            stats["candidates"] - stats["merged"],
                            stats["spanning"],
                        )
                    )
    pairs = np.concatenate(all_pairs) if all_pairs else np.zeros((0, 2), np.int64)
    return pairs.astype(np.int64, copy=False), seam_rows(seams, g.ndim)


def _bounds(rec):
    return {k: tuple(tuple(b) for b in v) for k, v in rec.get("band_bounds", {}).items()}


@_batch
def relabel_tiles(
    plan: RunPlan,
    tiles: Sequence[int],
    luts: Sequence[np.ndarray],
    out_path: str,
    out_token: str,
    reader=None,
    ids_1_to_n: Sequence[bool] | None = None,
    preview: tuple[int, int | None] | None = None,
    out_format: Literal[2, 3] | None = None,
) -> int | tuple[int, list[tuple[tuple[int, ...], np.ndarray]]]:
    """Write ``lut[staged labels]`` for each tile into the output array; returns voxels
    written. With ``plan.read_back`` the labels are read again from ``reader`` (the
    input) and mapped through the tile's staged ids, or directly through ``lut`` for
    tiles whose record says their ids are 1..n (``ids_1_to_n``: nothing staged is read).

    ``preview``: ``(step, plane)`` of the run's preview: returns ``(voxels, samples)``,
    the preview's samples of every tile written (``(at, final labels)``, taken from the
    tile in memory as it is written: the pictures never read the output again).
    ``out_format``: the output's zarr format, when known (it is opened reading only that
    format's metadata)."""
    staging = Staging(plan.staging_root, durable=plan.durable, generation=plan.staging_generation)
    samples: list[tuple[tuple[int, ...], np.ndarray]] = []
    out = open_zarr_array_cached(out_path, out_token, "r+", out_format)
    written = _relabel_tiles(plan, tiles, luts, out, reader, ids_1_to_n, staging, preview, samples)
    return written if preview is None else (written, samples)


def _relabel_tiles(
    plan: RunPlan,
    tiles: Sequence[int],
    luts: Sequence[np.ndarray],
    out,
    reader,
    ids_1_to_n: Sequence[bool] | None,
    staging: Staging,
    preview: tuple[int, int | None] | None,
    samples: list,
) -> int:
    direct = chunk_files(out)  # chunks written here at once: buffers reused
    g = plan.grid
    written = 0
    pending: list = []  # tiles with labels: never all fill, no need to check
    size = 0
    if plan.unit_tile_shape is not None:
        return _relabel_units(plan, tiles, luts, out, direct, reader, staging, preview, samples)

    def buffer(shape, dtype):
        return _SCRATCH.array("output", shape, dtype) if direct is not None else None

    try:
        with staging:  # packs stay open for the batch
            for n, region, dst in _relabelled(
                plan, tiles, luts, reader, ids_1_to_n, staging, buffer
            ):
                written += dst.size
                if preview is not None:
                    got = sample_tile(g.core_bounds(n), preview, dst)
                    if got is not None:
                        samples.append(got)
                if direct is not None and direct.write(region, dst, check_fill=False):
                    continue
                pending.append((region, dst))
                size += dst.nbytes
                if size >= WRITE_GROUP_BYTES:
                    write_regions(out, pending, check_fill=False)
                    pending, size = [], 0
            write_regions(out, pending, check_fill=False)
    finally:
        _SCRATCH.clear()
    return written


def _relabelled(
    plan: RunPlan,
    tiles: Sequence[int],
    luts: Sequence[np.ndarray],
    reader,
    ids_1_to_n: Sequence[bool] | None,
    staging: Staging,
    buffer: Callable[[tuple[int, ...], np.dtype], np.ndarray | None],
):
    """``(tile, region, final labels)`` of every tile with labels: ``lut[staged labels]``,
    or (``plan.read_back``) the labels read again from ``reader`` mapped through the
    tile's staged ids. ``buffer(shape, dtype)`` may give the array to fill (None: a new
    one)."""
    g = plan.grid
    names = ("labels", "ids") if plan.read_back else ("labels",)
    plain = ids_1_to_n if ids_1_to_n is not None else [False] * len(tiles)
    # tiles without labels are skipped: their chunks stay absent (read as 0); a tile read
    # back whose ids are 1..n needs nothing staged
    todo = [
        (n, lut, bool(bare and plan.read_back))
        for n, lut, bare in zip(tiles, luts, plain)
        if lut.size > 1
    ]
    staging.prefetch((n for n, _, direct in todo if not direct), names)  # few requests
    for n, lut, direct in todo:
        arrays = {} if direct else staging.read_tile(n, names=names)[1]
        shape = g.core_shape(n)
        dst = buffer(shape, lut.dtype)
        if dst is None:
            dst = np.empty(shape, lut.dtype)
        if "labels" in arrays:
            map_through(lut, arrays["labels"], dst)
        else:
            _read_back(plan, reader, n, lut, arrays.get("ids"), dst)
        yield n, g.core_slices(n), dst


def relabel_into(
    plan: RunPlan,
    tiles: Sequence[int],
    luts: Sequence[np.ndarray],
    result: np.ndarray,
    reader=None,
    ids_1_to_n: Sequence[bool] | None = None,
    preview: tuple[int, int | None] | None = None,
) -> tuple[int, list[tuple[tuple[int, ...], np.ndarray]]]:
    """:func:`relabel_tiles` into ``result`` (an array of the image's spatial shape, in
    this process) instead of the output store: the relabel of a call whose caller wants
    the labels as an array and no store (``compute=True`` without ``write_to``). Tiles
    without labels are left as they are (``result`` starts as zeros). Threads may fill
    one ``result`` at once (the tiles do not overlap). Returns ``(voxels, samples)`` as
    :func:`relabel_tiles` does with ``preview``.

    Not for merge units (``plan.unit_tile_shape``): those are written as shards.
    """
    if plan.unit_tile_shape is not None:
        raise ValueError("relabel_into does not relabel merge units; use relabel_tiles")
    staging = Staging(plan.staging_root, durable=plan.durable, generation=plan.staging_generation)
    samples: list[tuple[tuple[int, ...], np.ndarray]] = []
    written = 0
    with staging:
        for n, region, dst in _relabelled(
            plan, tiles, luts, reader, ids_1_to_n, staging, lambda shape, dtype: None
        ):
            result[region] = dst
            written += dst.size
            if preview is not None:
                got = sample_tile(plan.grid.core_bounds(n), preview, dst)
                if got is not None:
                    samples.append(got)
    return written, samples


#: What the relabel of a merge unit reads of its staged record.
UNIT_ARRAYS = ("comp", "ids", "keys")


def _relabel_units(
    plan: RunPlan,
    units: Sequence[int],
    luts: Sequence[np.ndarray],
    out,
    direct,
    reader,
    staging: Staging,
    preview: tuple[int, int | None] | None = None,
    samples: list | None = None,
) -> int:
    """relabel_tiles for merge units (core/units.py): each tile of each unit is read
    from the input, mapped, and stored as its own chunk: a chunk file, or an inner chunk
    of the unit's shard when the output is sharded (core/shardfiles.py). With
    ``preview``, each unit mapped as one array is sampled into ``samples`` at once (one
    entry per unit: a 16,384-tile merge sent 16,384 small arrays to the driver), any
    other each tile stored on its way out."""
    g = plan.grid
    sharded = getattr(out, "shards", None) is not None
    shards = ShardWriter.of(out) if sharded else None
    pending: list = []
    size = 0
    reuse = direct is not None or shards is not None  # the tile is stored at once

    def map_into(n, tile_lut, raw, ids):
        dst = (
            _SCRATCH.array("output", raw.shape, tile_lut.dtype)
            if reuse
            else np.empty(raw.shape, tile_lut.dtype)
        )
        _map_raw(plan, n, raw, tile_lut, ids, dst)
        return dst

    def write_tile(tb, data):
        nonlocal pending, size
        region = tuple(slice(a, b) for a, b in tb)
        if direct is not None and direct.write(region, data, check_fill=False):
            return
        pending.append((region, np.array(data)))  # data is a reused buffer's
        size += data.nbytes
        if size >= WRITE_GROUP_BYTES and not sharded:
            write_regions(out, pending, check_fill=False)
            pending, size = [], 0

    read = _TileReader(plan, reader)
    written = 0
    try:
        with staging:
            staging.prefetch((n for n, lut in zip(units, luts) if lut.size > 1), UNIT_ARRAYS)
            for n, lut in zip(units, luts):
                if lut.size <= 1:
                    continue
                rec, arrays = staging.read_tile(n, names=UNIT_ARRAYS)
                shard = shards.shard(g.tile_index(n)) if shards is not None else None
                store = shard.add if shard else write_tile
                whole: Callable | None = None
                if preview is not None and samples is not None:
                    if "unit_max" in rec:  # mapped as one array: sampled as one
                        whole = functools.partial(
                            _sample_unit, samples, g.core_bounds(n), plan.out_chunks, preview
                        )
                    else:  # mapped tile by tile: each tile sampled on its way out
                        store = _sampling(store, preview, samples)
                written += relabel_unit(
                    g.core_bounds(n),
                    plan.out_chunks,  # the tiles inside the unit
                    rec,
                    arrays,
                    lut,
                    read,
                    _SCRATCH.array,
                    store,
                    functools.partial(map_into, n),
                    whole,
                )
                if shard is not None:
                    shard.close()
                elif sharded:  # zarr writes the unit's shard, once
                    write_regions(
                        out, [(g.core_slices(n), _assemble(g, n, pending, lut))], check_fill=False
                    )
                    pending, size = [], 0
            write_regions(out, pending, check_fill=False)
    finally:
        _SCRATCH.clear()
    return written


def _sample_unit(
    samples: list,
    bounds: Sequence[tuple[int, int]],
    tile_shape: Sequence[int],
    preview: tuple[int, int | None],
    tm: np.ndarray,
) -> None:
    """Keep the preview's samples of a unit mapped as one (tile-major) array: the
    ``mapped_unit`` of :func:`relabel_unit` (a gather: a copy, not a view of ``tm``)."""
    got = unit_samples(tm, bounds, tile_shape, *preview)
    if got is not None:
        samples.append(got)


def _sampling(store: Callable, preview: tuple[int, int | None], samples: list) -> Callable:
    """``store(tile_bounds, labels)`` that first keeps the tile's preview samples."""

    def sample_and_store(tb, data) -> None:
        got = sample_tile(tb, preview, data)
        if got is not None:
            samples.append(got)
        store(tb, data)

    return sample_and_store


def _assemble(g, n: int, parts: list, lut: np.ndarray) -> np.ndarray:
    """Unit ``n``'s labels from its tiles' ``(region, labels)`` (absent tiles: 0)."""
    lo = [a for a, _ in g.core_bounds(n)]
    buf = np.zeros(g.core_shape(n), lut.dtype)
    for region, data in parts:
        buf[tuple(slice(r.start - o, r.stop - o) for r, o in zip(region, lo))] = data
    return buf


def _map_raw(
    plan: RunPlan,
    n: int,
    raw: np.ndarray,
    lut: np.ndarray,
    ids: np.ndarray | None,
    dst: np.ndarray,
) -> None:
    """``dst`` = final labels of stored labels ``raw`` of tile (or unit) ``n``: through
    ``lut`` directly (ids 1..k), or original id -> position in ``ids`` -> ``lut``."""
    try:
        if ids is None:  # ids 1..k: the local ids themselves
            map_through(lut, raw, dst)
        else:
            dst[...] = _map_ids(raw, ids, lut[1:], lut.dtype)
    except IndexError:
        raise input_changed(f"tile {n} (origin {plan.grid.origin(n)})") from None


def _read_back(
    plan: RunPlan, reader, n: int, lut: np.ndarray, ids: np.ndarray | None, dst: np.ndarray
) -> None:
    """Tile ``n``'s final labels from the input into ``dst``: original id -> local id
    -> ``lut``."""
    if reader is None:
        raise BlockbusterError(
            f"tile {n} has no staged labels and no input to read them "
            "from (internal error: read_back without a reader)"
        )
    shape = plan.grid.core_shape(n)
    raw = np.asarray(
        reader.read(
            _core_region(plan, n), out=_SCRATCH.array("input", shape, _reader_dtype(reader))
        )
    )
    _map_raw(plan, n, raw, lut, ids, dst)


def table_luts(table: MergeTable, tiles: Sequence[int], dtype) -> list[np.ndarray]:
    """Per-tile LUT slices for a batch (computed in the driver, shipped with the batch)."""
    return [table.tile_lut(n, dtype) for n in tiles]

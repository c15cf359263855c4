"""Merge units: many small tiles of stored labels indexed and relabelled as one.

A merge of stored per-tile labels (``read_back``) pays a fixed cost for every tile it
tracks: a staging record written and read back, a seam scan per neighbour through
that record, an entry in the merge table, a row in the report. With small tiles
(128 x 128 chunks are common in OME-Zarr) those costs exceed the work on the voxels.
A *merge unit* is a block of whole tiles (e.g. 16 x 16 tiles of 128 x 128) that the
pipeline tracks as one tile of a coarser grid:

- indexing a unit reads each of its tiles once (the same per-voxel work as indexing
  that tile alone), joins the labels that touch across the seams *inside* the unit
  right there, from the tiles' boundary faces (no staging round trip), and stages one
  record: the unit's outer faces, and how each tile's ids map to the unit's ids;
- the seam scan, the merge table and the relabel batches see only units;
- relabelling a unit maps each tile's ids through ``lut[unit ids]`` and writes each
  tile's chunk, exactly as relabelling that tile alone.

The output is the same, chunked by tiles. Units apply only where every tile is read
from the store and the tiles are small (:func:`unit_tiles`).

A unit is worked on as one array: its tiles are decoded into a *tile-major* buffer
(shape ``layers + tile_shape``, each tile contiguous, :func:`read_unit`), and every
step after the decoding is a handful of NumPy calls for the whole unit, not per tile
(a NumPy call costs 1-5 µs; at 16,384 voxels per tile the calls, not the voxels, were
the cost). One table holds the ids of all tiles (:class:`UnitTable`): tile ``t``'s id
``v`` sits at ``base[t] + v``, with ``base`` the running sum of the tiles' largest ids
plus one, so one lookup maps voxels, faces or whole tiles. Ids too large for such a
table (sparse 64-bit ids) are handled one tile at a time instead.

Node ids inside a unit: the ``k`` labels of the unit's ``i``-th tile (C order of
tiles) are the nodes ``offset_i + 1 .. offset_i + k``, ``offset_i`` the sum of the
counts before it, in increasing id order; node 0 is background. ``comp[node]`` is the
unit-level id (1..m).

Examples
--------
>>> unit_tiles((8192, 8192), (128, 128), unit_voxels=1 << 22, min_units=8)
(16, 16)
>>> unit_tiles((8192, 8192), (1024, 1024), unit_voxels=1 << 22, min_units=8)
(1, 1)
>>> unit_tiles((2048, 2048, 2048), (64, 64, 64), unit_voxels=1 << 22, min_units=256)
(4, 2, 2)
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from blockbuster.errors import InputChangedError, TileOutputError

from ._labels import _map_ids, _negative_labels, _small_uint, present_ids
from ._pictures import sample_starts
from ._seams import face_key, touch_pairs_planes

Bounds = Sequence[tuple[int, int]]
"""``((lo, hi), ...)`` per spatial axis, global coordinates."""
Planes = dict[tuple[int, bool], list[NDArray[Any]]]
"""The boundary planes of a unit's tiles: ``(axis, high side) -> one plane per layer``."""
Buffer = Callable[[str, tuple[int, ...], DTypeLike], NDArray[Any]]
"""``buffer(name, shape, dtype)``: a reusable work array."""
WriteTile = Callable[[tuple[tuple[int, int], ...], NDArray[Any]], object]
"""``write_tile(tile_bounds, labels)``: stores one tile's final labels."""
MapInto = Callable[[NDArray[Any], NDArray[Any], "NDArray[Any] | None"], NDArray[Any]]
"""``map_into(tile_lut, raw, ids)``: one tile's final labels."""


class ReadInto(Protocol):
    """``read_into(tile_bounds, out)`` fills ``out`` with a tile's labels, of ``dtype``."""

    @property
    def dtype(self) -> np.dtype[Any]: ...

    def __call__(self, bounds: tuple[tuple[int, int], ...], out: NDArray[Any], /) -> None: ...


__all__ = [
    "UNIT_VOXELS",
    "MIN_TILES_PER_UNIT",
    "unit_tiles",
    "unit_tiles_of",
    "index_unit",
    "relabel_unit",
    "input_changed",
]

#: voxels of a merge unit at most (16 MiB of uint32 labels; as a relabel batch)
UNIT_VOXELS = 1 << 22
#: units are used only where one holds at least this many tiles
MIN_TILES_PER_UNIT = 4
#: and only for tiles of at most UNIT_VOXELS / this many voxels (512 x 512 by default)
SMALL_TILE_FRACTION = 16


def unit_tiles(
    shape: Sequence[int], tile_shape: Sequence[int], *, unit_voxels: int, min_units: int
) -> tuple[int, ...]:
    """Tiles per merge unit along each axis: all 1 (no units) unless the tiles are small
    (``unit_voxels / SMALL_TILE_FRACTION`` voxels at most) and a unit can hold
    :data:`MIN_TILES_PER_UNIT` tiles or more.

    A unit grows (doubling along the axis with the most units left) while it stays
    within ``unit_voxels`` and the image keeps at least ``min_units`` units, so that
    every worker thread still gets several.
    """
    nd = len(shape)
    n_tiles = [math.ceil(s / t) for s, t in zip(shape, tile_shape)]
    per = [1] * nd
    voxels = math.prod(tile_shape)
    if voxels > unit_voxels // SMALL_TILE_FRACTION:
        return (1,) * nd  # big tiles: their fixed costs are small beside their voxels
    while True:
        best = None
        for d in range(nd):
            if per[d] >= n_tiles[d]:
                continue
            grown = per.copy()
            grown[d] = min(per[d] * 2, n_tiles[d])
            if voxels * math.prod(grown) > unit_voxels:
                continue
            units = math.prod(math.ceil(n / p) for n, p in zip(n_tiles, grown))
            if units < min_units:
                continue
            left = math.ceil(n_tiles[d] / per[d])
            if best is None or left > best[0]:
                best = (left, d, grown)
        if best is None:
            break
        per = best[2]
    if math.prod(per) < MIN_TILES_PER_UNIT:
        return (1,) * nd
    return tuple(per)


def unit_tiles_of(
    bounds: Sequence[tuple[int, int]], tile_shape: Sequence[int]
) -> Iterator[tuple[tuple[int, ...], tuple[tuple[int, int], ...]]]:
    """The tiles of a unit with core ``bounds``, in C order: ``(position in the unit,
    global bounds of the tile)``."""
    ranges = [range(lo // t, -(-hi // t)) for (lo, hi), t in zip(bounds, tile_shape)]
    for cell in itertools.product(*ranges):
        pos = tuple(c - r.start for c, r in zip(cell, ranges))
        tb = tuple(
            (max(lo, c * t), min(hi, (c + 1) * t))
            for (lo, hi), c, t in zip(bounds, cell, tile_shape)
        )
        yield pos, tb


def _layers(bounds: Bounds, tile_shape: Sequence[int]) -> list[int]:
    return [len(range(lo // t, -(-hi // t))) for (lo, hi), t in zip(bounds, tile_shape)]


def index_unit(
    bounds: Sequence[tuple[int, int]],
    tile_shape: Sequence[int],
    connectivity: int,
    read_into: ReadInto,
    unit: int,
    buffer: Buffer,
) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
    """Index the tiles of one unit; return its record fields and staged arrays.

    ``read_into(tile_bounds, out)`` fills ``out`` (the tile's whole chunk shape, of
    dtype ``read_into.dtype``) with the tile's labels from its top corner (the rest
    may hold anything); ``buffer(name, shape, dtype)`` hands out reusable work arrays
    (e.g. :meth:`Scratch.array <blockbuster.worker.Scratch.array>`). Record:
    ``n_labels`` (m, the unit's labels after joining touching labels inside it),
    ``unit_counts`` (labels per tile), ``unit_identity`` (per tile: ids are 1..k),
    ``unit_pairs`` (touching pairs joined inside the unit) and, when the unit's ids are
    small enough for one lookup table, ``unit_max`` (each tile's largest id). Arrays: the
    unit's outer faces in unit ids, ``comp`` (node -> unit id), and ``keys`` (with
    ``unit_max``: the present ids as positions in the unit's table) or ``ids`` (the
    present ids of the tiles whose ids are not 1..k, concatenated).

    Examples
    --------
    One object over two tiles of 2 x 2, each tile labelled on its own:

    >>> labels = np.array([[0, 1, 1, 0], [0, 1, 0, 0]], np.int32)
    >>> def read_into(tb, out):
    ...     out[...] = labels[tuple(slice(a, b) for a, b in tb)]
    >>> read_into.dtype = labels.dtype
    >>> rec, arrays = index_unit(((0, 2), (0, 4)), (2, 2), 1, read_into, 0,
    ...                          lambda name, shape, dtype: np.empty(shape, dtype))
    >>> rec["unit_counts"], rec["unit_pairs"], rec["n_labels"]
    ([1, 1], 1, 1)
    """
    tm = read_unit(bounds, tile_shape, read_into, buffer)
    _check_negative(tm, bounds, tile_shape, unit)
    table = UnitTable.of(tm)
    if table is None:  # huge ids: one tile at a time
        return _index_tiles(bounds, tile_shape, connectivity, tm)
    nd = len(bounds)
    ushape = tuple(hi - lo for lo, hi in bounds)
    layers = tm.shape[:nd]
    planes: dict[tuple[int, bool], list[NDArray[Any]]] = {}
    for d in range(nd):
        for hi in (False, True):
            face = np.take(tm, tile_shape[d] - 1 if hi else 0, axis=nd + d)
            nodes = table.nodes(face)
            planes[(d, hi)] = [_spatial(nodes.take(i, axis=d)) for i in range(layers[d])]
    faces = {}
    for d in range(nd):
        other = tuple(slice(0, u) for e, u in enumerate(ushape) if e != d)
        faces[face_key(d, False)] = planes[(d, False)][0][other]
        # the last layer's tiles end where the unit ends (maybe inside a tile)
        last = np.take(
            tm.take(layers[d] - 1, axis=d),
            ushape[d] - 1 - (layers[d] - 1) * tile_shape[d],
            axis=nd - 1 + d,
        )
        faces[face_key(d, True)] = _spatial(table.nodes(last, layer=(d, layers[d] - 1)))[other]
    return _staged(
        planes,
        layers,
        connectivity,
        table.n_nodes,
        faces,
        {"keys": table.keys},
        {
            "unit_counts": table.counts.tolist(),
            "unit_identity": table.identity.tolist(),
            "unit_max": table.max.tolist(),
        },
    )


def _index_tiles(
    bounds: Bounds, tile_shape: Sequence[int], connectivity: int, tm: NDArray[Any]
) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
    """index_unit one tile at a time (ids too large for one table of the unit)."""
    nd = len(bounds)
    lo = [b[0] for b in bounds]
    ushape = tuple(hi - lo_ for lo_, hi in bounds)
    layers = _layers(bounds, tile_shape)
    planes: dict[tuple[int, bool], list[NDArray[Any]]] = {
        (d, hi): [np.zeros(ushape[:d] + ushape[d + 1 :], np.int64) for _ in range(layers[d])]
        for d in range(nd)
        for hi in (False, True)
    }
    counts: list[int] = []
    identity: list[bool] = []
    kept_ids: list[NDArray[Any]] = []
    offset = 0
    for pos, tb in unit_tiles_of(bounds, tile_shape):
        labels = tm[pos][tuple(slice(0, b - a) for a, b in tb)]
        ids = present_ids(labels)
        k = int(ids.size)
        same = k == 0 or int(ids[-1]) == k
        counts.append(k)
        identity.append(same)
        if not same:
            kept_ids.append(ids)
        if k:
            nodes = np.arange(offset + 1, offset + k + 1, dtype=np.int64)
            place = [slice(a - l0, b - l0) for (a, b), l0 in zip(tb, lo)]
            for d in range(nd):
                other = tuple(place[:d] + place[d + 1 :])
                for hi in (False, True):
                    face = _map_ids(labels.take(-1 if hi else 0, axis=d), ids, nodes, np.int64)
                    planes[(d, hi)][pos[d]][other] = face
        offset += k
    faces = {
        face_key(d, hi): planes[(d, hi)][-1 if hi else 0]
        for d in range(nd)
        for hi in (False, True)
    }
    return _staged(
        planes,
        layers,
        connectivity,
        offset,
        faces,
        {"ids": np.concatenate(kept_ids)} if kept_ids else {},
        {"unit_counts": counts, "unit_identity": identity},
    )


def _staged(
    planes: Planes,
    layers: Sequence[int],
    connectivity: int,
    n_nodes: int,
    faces: dict[str, NDArray[Any]],
    arrays: dict[str, NDArray[Any]],
    fields: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
    """Join the unit's labels across its inner seams; return the record fields and the
    arrays to stage (``comp``, the outer ``faces`` in unit ids, and ``arrays``)."""
    comp, m, n_pairs = _join(planes, layers, connectivity, n_nodes)
    rec = {"n_labels": m, **fields, "unit_pairs": n_pairs}
    if not m:
        return rec, {}
    small = _small_uint(m)
    return rec, {
        "comp": comp.astype(small),
        **arrays,
        **{k: comp[v].astype(small) for k, v in faces.items()},
    }


def _join(
    planes: Planes, layers: Sequence[int], connectivity: int, n_nodes: int
) -> tuple[NDArray[Any], int, int]:
    """``(comp, m, pairs)``: each node's unit id (labels touching across an inner seam
    share one; ids 1..m in order of their first node), from the tiles' boundary planes,
    and how many touching pairs joined them."""
    found = []
    for d, n in enumerate(layers):
        if n < 2:
            continue
        hi, lo = planes[(d, True)][: n - 1], planes[(d, False)][1:]
        if hi[0].ndim:
            # all inner seams along d in one call: the seams' planes end to end along
            # their first axis, a plane of background between two (so that no offset
            # reaches from one seam into the next)
            gap = np.zeros((1,) + hi[0].shape[1:], hi[0].dtype)
            hi = [np.concatenate([x for p in hi for x in (p, gap)])]
            lo = [np.concatenate([x for p in lo for x in (p, gap)])]
        for a, b in zip(hi, lo):
            p = touch_pairs_planes(a, b, connectivity - 1)
            if len(p):
                found.append(p)
    if not found:
        return np.arange(n_nodes + 1, dtype=np.int64), n_nodes, 0
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = np.concatenate(found)
    graph = coo_matrix(
        (np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])),
        shape=(n_nodes + 1, n_nodes + 1),
    ).tocsr()
    # components are numbered in order of their lowest node: node 0 (background, never
    # paired) gets 0, the others 1..m
    m, comp = connected_components(graph, directed=False)
    return comp.astype(np.int64, copy=False), int(m) - 1, int(len(pairs))


def relabel_unit(
    bounds: Sequence[tuple[int, int]],
    tile_shape: Sequence[int],
    record: dict[str, Any],
    arrays: dict[str, NDArray[Any]],
    lut: NDArray[Any],
    read_into: ReadInto,
    buffer: Buffer,
    write_tile: WriteTile,
    map_into: MapInto,
    mapped_unit: Callable[[NDArray[Any]], object] | None = None,
) -> int:
    """Write the final labels of each tile of a unit; return the voxels written.

    ``lut`` maps the unit's ids to final ids. The unit's tiles are read as in
    :func:`index_unit`; with one table for the unit (``unit_max`` in the record) the
    whole unit is mapped at once (and handed to ``mapped_unit``, tile-major, before its
    tiles are written), else ``map_into(tile_lut, raw, ids)`` maps one tile (``ids``:
    its present ids, or None when they are 1..k). ``write_tile(tile_bounds, labels)``
    stores a tile; tiles without labels are not written (they read as 0).
    """
    final = lut[arrays["comp"]] if "comp" in arrays else np.zeros(1, lut.dtype)
    tm = read_unit(bounds, tile_shape, read_into, buffer)
    counts = record["unit_counts"]
    tiles = _unit_layout(_key(bounds), tuple(tile_shape)).tiles
    if "unit_max" in record:
        table = UnitTable.rebuild(record["unit_max"], arrays["keys"], tm.shape[: len(bounds)])
        n_tiles = table.max.size
        if np.any(tm.reshape(n_tiles, -1).max(axis=1) > table.max):
            # an id past its tile's largest when indexed
            raise input_changed(f"the merge unit at {tuple(lo for lo, _ in bounds)}")
        out = table.map(
            tm,
            final,
            buffer("unit-output", tm.shape, lut.dtype),
            buffer("unit-index", tm.shape[1:], np.intp),
        )
        if mapped_unit is not None:
            mapped_unit(out)
        mapped: Iterator[NDArray[Any] | None] = (out[pos] for pos, _ in tiles)
    else:
        mapped = _map_tiles(tm, tiles, record, arrays, final, map_into)
    written = 0
    for (_pos, tb), k, labels in zip(tiles, counts, mapped):
        if k:
            assert labels is not None  # only tiles without labels map to None
            write_tile(tb, labels[tuple(slice(0, b - a) for a, b in tb)])
            written += math.prod(b - a for a, b in tb)
    return written


def _map_tiles(
    tm: NDArray[Any],
    tiles: Sequence[tuple[tuple[int, ...], tuple[tuple[int, int], ...]]],
    record: dict[str, Any],
    arrays: dict[str, NDArray[Any]],
    final: NDArray[Any],
    map_into: MapInto,
) -> Iterator[NDArray[Any] | None]:
    """Each tile's final labels, one tile at a time (None for tiles without labels)."""
    ids_all = arrays.get("ids")
    offset = ids_at = 0
    for (pos, _tb), k, same in zip(tiles, record["unit_counts"], record["unit_identity"]):
        if not k:
            yield None
            continue
        tile_lut = final[offset : offset + k + 1].copy()
        tile_lut[0] = 0
        ids = None
        if not same:
            assert ids_all is not None  # staged whenever a tile's ids are not 1..k
            ids = ids_all[ids_at : ids_at + k]
            ids_at += k
        yield map_into(tile_lut, np.ascontiguousarray(tm[pos]), ids)
        offset += k


def input_changed(where: str) -> InputChangedError:
    """The error for stored labels that hold ids their index pass did not see."""
    return InputChangedError(
        f"{where} of the input holds label ids it did not hold when it was indexed: the "
        "input changed during the merge. Run the merge again on an input nobody is "
        "writing to."
    )


# -- a unit as one array ---------------------------------------------------------------


def read_unit(
    bounds: Bounds, tile_shape: Sequence[int], read_into: ReadInto, buffer: Buffer
) -> NDArray[Any]:
    """The unit's tiles in *tile-major* order: shape ``layers + tile_shape`` (tile
    ``pos`` is ``tm[pos]``, contiguous); the part of a tile past the unit's end is 0.

    A ``read_into`` with a ``many(tile_bounds, out)`` method (``out``: the tiles
    stacked, shape ``(n,) + tile_shape``) reads all of the unit's tiles in one call."""
    layout = _unit_layout(_key(bounds), tuple(tile_shape))
    tm = buffer("unit-input", layout.layers + tuple(tile_shape), read_into.dtype)
    many = getattr(read_into, "many", None)
    if many is not None:
        many(layout.bounds, tm.reshape((-1,) + tuple(tile_shape)))
    else:
        for pos, tb in layout.tiles:
            read_into(tb, tm[pos])
    for pos, tb in layout.clipped:  # at the image's edge
        slot = tm[pos]
        for ax, ((a, b), t) in enumerate(zip(tb, tile_shape)):
            if b - a < t:
                slot[(slice(None),) * ax + (slice(b - a, None),)] = 0
    return tm


def _key(bounds: Bounds) -> tuple[tuple[int, int], ...]:
    return tuple((int(lo), int(hi)) for lo, hi in bounds)


class _Layout(NamedTuple):
    layers: tuple[int, ...]
    tiles: tuple[tuple[tuple[int, ...], tuple[tuple[int, int], ...]], ...]
    bounds: tuple[tuple[tuple[int, int], ...], ...]
    clipped: tuple[tuple[tuple[int, ...], tuple[tuple[int, int], ...]], ...]


@functools.lru_cache(maxsize=32)
def _unit_layout(bounds: tuple[tuple[int, int], ...], tile_shape: tuple[int, ...]) -> _Layout:
    """The tiles of a unit (:func:`unit_tiles_of`), kept for the few units a worker has
    in hand: its relabel walks them twice (~5 µs a tile to build)."""
    tiles = tuple(unit_tiles_of(bounds, tile_shape))
    clipped = tuple(
        (pos, tb) for pos, tb in tiles if any(b - a < t for (a, b), t in zip(tb, tile_shape))
    )
    return _Layout(
        tuple(_layers(bounds, tile_shape)), tiles, tuple(tb for _, tb in tiles), clipped
    )


def unit_samples(
    tm: NDArray[Any],
    bounds: Bounds,
    tile_shape: Sequence[int],
    step: int,
    plane: int | None,
) -> tuple[tuple[int, ...], NDArray[Any]] | None:
    """The preview's samples of a whole unit from its tile-major array ``tm``: every
    ``step``-th pixel from 0 of each in-plane axis (for 3D, of the z index ``plane``),
    as ``(position in the preview, samples)``; None when the unit holds none. One
    gather for the unit, where sampling each tile costs a few NumPy calls per tile.

    Examples
    --------
    >>> img = np.arange(64).reshape(8, 8)
    >>> tm = img.reshape(2, 4, 2, 4).transpose(0, 2, 1, 3)     # 2 x 2 tiles of 4 x 4
    >>> at, got = unit_samples(tm, ((0, 8), (0, 8)), (4, 4), 3, None)
    >>> at, bool((got == img[::3, ::3]).all())
    ((0, 0), True)
    """
    nd = len(bounds)
    index: list[Any] = [None] * (2 * nd)
    at: list[int] = []
    lens: list[int] = []
    for d, ((lo, hi), t) in enumerate(zip(bounds, tile_shape)):
        if d == 0 and plane is not None:
            if not lo <= plane < hi:
                return None
            x = np.array([plane - lo])
        else:
            keep = sample_starts(lo, hi, step)
            if keep is None:
                return None
            x = np.arange(keep.start, keep.stop, keep.step)
            at.append((lo + keep.start) // step)
        lens.append(x.size)
        index[d], index[nd + d] = x // t, x % t
    # broadcast the per-axis positions against each other (an open mesh)
    for d in range(nd):
        shape = [1] * nd
        shape[d] = lens[d]
        index[d] = index[d].reshape(shape)
        index[nd + d] = index[nd + d].reshape(shape)
    got = tm[tuple(index)]
    if plane is not None:
        got = got[0]
    return tuple(at), got


def _check_negative(
    tm: NDArray[Any], bounds: Bounds, tile_shape: Sequence[int], unit: int
) -> None:
    if tm.dtype.kind not in "iu":
        raise TileOutputError(
            f"labels of dtype {tm.dtype} in merge unit {unit}; label "
            "images must hold integers (0 = background)",
            unit,
            tuple(lo for lo, _ in bounds),
        )
    if tm.dtype.kind == "i" and tm.size and tm.min() < 0:
        nd = len(bounds)
        at = np.unravel_index(int(np.argmin(tm)), tm.shape)
        origin = tuple(int(lo + g * t) for (lo, _), g, t in zip(bounds, at[:nd], tile_shape))
        raise _negative_labels(int(tm.min()), unit, origin)


def _spatial(a: NDArray[Any]) -> NDArray[Any]:
    """A tile-major array (``layers + tile dims``) in spatial layout."""
    k = a.ndim // 2
    order = [x for d in range(k) for x in (d, k + d)]
    return a.transpose(order).reshape([a.shape[d] * a.shape[k + d] for d in range(k)])


class UnitTable:
    """The ids present in a unit, as positions in one table: tile ``t``'s id ``v`` is at
    ``base[t] + v`` (``base`` from the tiles' largest ids), so that one lookup maps any
    voxel, face or tile of the unit. Node ids are 1..n in table order (tile by tile,
    then by id), as in :func:`_index_tiles`."""

    def __init__(self, mx: NDArray[Any], keys: NDArray[Any], layers: tuple[int, ...]):
        self.max = mx
        self.layers = layers
        self.base = np.zeros(mx.size, np.int64)
        np.cumsum(mx[:-1] + 1, out=self.base[1:])
        self.size = int(self.base[-1] + mx[-1] + 1)
        self.keys = keys
        self.n_nodes = int(keys.size)
        self.node = np.zeros(self.size, np.int64)
        self.node[keys] = np.arange(1, keys.size + 1)

    @classmethod
    def of(cls, tm: NDArray[Any]) -> UnitTable | None:
        """The table of a tile-major unit, or None when its ids are too large."""
        nd = tm.ndim // 2
        n_tiles = math.prod(tm.shape[:nd])
        per = tm.reshape(n_tiles, -1)
        mx = per.max(axis=1)
        limit = 4 * tm.size + 65536
        if int(mx.max()) > limit:
            return None
        mx = mx.astype(np.int64)
        if int((mx + 1).sum()) > limit:
            return None
        flat = per.reshape(-1)
        starts = np.empty(flat.size, bool)  # every id starts a run of equal values
        starts[0] = True
        np.not_equal(flat[1:], flat[:-1], out=starts[1:])
        starts[:: per.shape[1]] = True
        at = np.flatnonzero(starts)
        vals = flat[at]
        keep = vals > 0
        table = cls(mx, np.zeros(0, np.int64), tm.shape[:nd])
        seen = np.zeros(table.size, bool)
        seen[vals[keep].astype(np.int64) + table.base[at[keep] // per.shape[1]]] = True
        keys = np.flatnonzero(seen)
        return cls(mx, keys, tm.shape[:nd])

    @classmethod
    def rebuild(cls, mx: ArrayLike, keys: NDArray[Any], layers: Sequence[int]) -> UnitTable:
        return cls(np.asarray(mx, np.int64), keys.astype(np.int64, copy=False), tuple(layers))

    @property
    def counts(self) -> NDArray[Any]:
        tile = np.searchsorted(self.base, self.keys, side="right") - 1
        counts: NDArray[np.intp] = np.bincount(tile, minlength=self.max.size)
        return counts

    @property
    def identity(self) -> NDArray[Any]:
        same: NDArray[np.bool_] = self.counts == self.max
        return same

    def nodes(self, face: NDArray[Any], layer: tuple[int, int] | None = None) -> NDArray[Any]:
        """Node ids of a tile-major ``face`` (``layers + tile dims``, one tile axis
        taken; with ``layer=(axis, i)`` one layer along ``axis`` taken too)."""
        base: NDArray[np.int64] = self.base.reshape(self.layers)
        if layer is not None:
            # numpy's stub types take(scalar index) as a scalar even along an axis
            base = base.take(layer[1], axis=layer[0])  # type: ignore[assignment]
        k = base.ndim
        nodes: NDArray[np.int64] = self.node[
            face + base.reshape(base.shape + (1,) * (face.ndim - k))
        ]
        return nodes

    def map(
        self, tm: NDArray[Any], final: NDArray[Any], out: NDArray[Any], index: NDArray[Any]
    ) -> NDArray[Any]:
        """``out`` = final ids of every voxel of the tile-major unit ``tm`` (``final``:
        node -> final id), one layer of tiles at a time through ``index``. No id of a
        tile may exceed that tile's largest id when the table was made (the caller
        checks)."""
        by_key = final[self.node]
        base = self.base.reshape(self.layers)
        nd = len(self.layers)
        for i in range(tm.shape[0]):
            b = base[i].reshape(base.shape[1:] + (1,) * nd)
            np.add(tm[i], b, out=index, casting="unsafe")
            # "clip": with "raise" and out=, numpy maps into a copy first
            np.take(by_key, index, out=out[i], mode="clip")
        return out

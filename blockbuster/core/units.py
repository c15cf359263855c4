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

Node ids inside a unit: the ``k`` labels of the unit's ``i``-th tile (C order of
tiles) are the nodes ``offset_i + 1 .. offset_i + k``, ``offset_i`` the sum of the
counts before it; node 0 is background. ``comp[node]`` is the unit-level id (1..m).

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

import itertools
import math
from typing import Any, Iterator, Sequence

import numpy as np

from .labels import _map_ids, _small_uint, check_tile_labels, present_ids
from .seams import face_key, touch_pairs_planes

__all__ = ["UNIT_VOXELS", "MIN_TILES_PER_UNIT", "unit_tiles", "unit_tiles_of",
           "index_unit", "relabel_unit"]

#: voxels of a merge unit at most (16 MiB of uint32 labels; as a relabel batch)
UNIT_VOXELS = 1 << 22
#: units are used only where one holds at least this many tiles
MIN_TILES_PER_UNIT = 4
#: and only for tiles of at most UNIT_VOXELS / this many voxels (512 x 512 by default)
SMALL_TILE_FRACTION = 16


def unit_tiles(shape: Sequence[int], tile_shape: Sequence[int], *, unit_voxels: int,
               min_units: int) -> tuple[int, ...]:
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
        return (1,) * nd         # big tiles: their fixed costs are small beside their voxels
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


def unit_tiles_of(bounds: Sequence[tuple[int, int]], tile_shape: Sequence[int]
                  ) -> Iterator[tuple[tuple[int, ...], tuple[tuple[int, int], ...]]]:
    """The tiles of a unit with core ``bounds``, in C order: ``(position in the unit,
    global bounds of the tile)``."""
    ranges = [range(lo // t, -(-hi // t)) for (lo, hi), t in zip(bounds, tile_shape)]
    for cell in itertools.product(*ranges):
        pos = tuple(c - r.start for c, r in zip(cell, ranges))
        tb = tuple((max(lo, c * t), min(hi, (c + 1) * t))
                   for (lo, hi), c, t in zip(bounds, cell, tile_shape))
        yield pos, tb


def _layers(bounds, tile_shape) -> list[int]:
    return [len(range(lo // t, -(-hi // t))) for (lo, hi), t in zip(bounds, tile_shape)]


def index_unit(bounds: Sequence[tuple[int, int]], tile_shape: Sequence[int],
               connectivity: int, read_tile, unit: int) -> tuple[dict[str, Any],
                                                                 dict[str, np.ndarray]]:
    """Index the tiles of one unit; return its record fields and staged arrays.

    ``read_tile(tile_bounds)`` returns a tile's labels (may reuse one buffer). Record:
    ``n_labels`` (m, the unit's labels after joining touching labels inside it),
    ``unit_counts`` (labels per tile), ``unit_identity`` (per tile: ids are 1..k),
    ``unit_pairs`` (touching pairs joined inside the unit).
    Arrays: the unit's outer faces in unit ids, ``comp`` (node -> unit id) and
    ``ids`` (the present ids of the tiles whose ids are not 1..k, concatenated).
    """
    nd = len(bounds)
    lo = [b[0] for b in bounds]
    ushape = tuple(hi - lo_ for lo_, hi in bounds)
    layers = _layers(bounds, tile_shape)
    planes: dict[tuple[int, bool], list[np.ndarray]] = {
        (d, hi): [np.zeros(ushape[:d] + ushape[d + 1:], np.int64) for _ in range(layers[d])]
        for d in range(nd) for hi in (False, True)}
    counts: list[int] = []
    identity: list[bool] = []
    kept_ids: list[np.ndarray] = []
    offset = 0
    for pos, tb in unit_tiles_of(bounds, tile_shape):
        shape = tuple(b - a for a, b in tb)
        origin = tuple(a for a, _ in tb)
        labels = check_tile_labels(read_tile(tb), shape, unit, origin, negatives=False)
        ids = present_ids(labels, unit, origin)          # negative labels: an error
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
                other = tuple(place[:d] + place[d + 1:])
                for hi in (False, True):
                    face = labels.take(-1 if hi else 0, axis=d)
                    if same:
                        face = np.where(face > 0, face.astype(np.int64) + offset, 0)
                    else:
                        face = _map_ids(face, ids, nodes, np.int64)
                    planes[(d, hi)][pos[d]][other] = face
        offset += k
    comp, m, n_pairs = _join(planes, layers, connectivity, offset)
    small = _small_uint(m)
    arrays: dict[str, np.ndarray] = {}
    if m:
        arrays["comp"] = comp.astype(small)
        if kept_ids:
            arrays["ids"] = np.concatenate(kept_ids)
        for d in range(nd):
            arrays[face_key(d, False)] = comp[planes[(d, False)][0]].astype(small)
            arrays[face_key(d, True)] = comp[planes[(d, True)][-1]].astype(small)
    rec = {"n_labels": m, "unit_counts": counts, "unit_identity": identity,
           "unit_pairs": n_pairs}
    return rec, arrays


def _join(planes, layers, connectivity: int, n_nodes: int) -> tuple[np.ndarray, int, int]:
    """``(comp, m, pairs)``: each node's unit id (labels touching across an inner seam
    share one; ids 1..m in order of their first node), from the tiles' boundary planes,
    and how many touching pairs joined them."""
    found = []
    for d, n in enumerate(layers):
        for i in range(n - 1):
            p = touch_pairs_planes(planes[(d, True)][i], planes[(d, False)][i + 1],
                                   connectivity - 1)
            if len(p):
                found.append(p)
    if not found:
        return np.arange(n_nodes + 1, dtype=np.int64), n_nodes, 0
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    pairs = np.concatenate(found)
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])),
                       shape=(n_nodes + 1, n_nodes + 1)).tocsr()
    # components are numbered in order of their lowest node: node 0 (background, never
    # paired) gets 0, the others 1..m
    m, comp = connected_components(graph, directed=False)
    return comp.astype(np.int64, copy=False), int(m) - 1, int(len(pairs))


def relabel_unit(bounds: Sequence[tuple[int, int]], tile_shape: Sequence[int],
                 record: dict[str, Any], arrays: dict[str, np.ndarray], lut: np.ndarray,
                 read_tile, write_tile, map_into) -> int:
    """Write the final labels of each tile of a unit; return the voxels written.

    ``lut`` maps the unit's ids to final ids. For each tile with labels,
    ``map_into(tile_lut, raw, ids)`` returns the final labels of the raw tile (``ids``:
    its present ids, or None when they are 1..k) and ``write_tile(tile_bounds, labels)``
    stores them; tiles without labels are not written (they read as 0).
    """
    final = lut[arrays["comp"]] if "comp" in arrays else np.zeros(1, lut.dtype)
    ids_all = arrays.get("ids")
    offset = 0
    ids_at = 0
    written = 0
    tiles = unit_tiles_of(bounds, tile_shape)
    for (_, tb), k, same in zip(tiles, record["unit_counts"], record["unit_identity"]):
        if k:
            tile_lut = final[offset:offset + k + 1].copy()
            tile_lut[0] = 0
            ids = None
            if not same:
                ids = ids_all[ids_at:ids_at + k]
                ids_at += k
            write_tile(tb, map_into(tile_lut, read_tile(tb), ids))
            written += math.prod(b - a for a, b in tb)
        offset += k
    return written

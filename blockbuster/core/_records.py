"""What the driver keeps of every tile and every seam: NumPy columns, not Python objects.

A run of a million tiles would hold a million record dicts (~750 B each: a dict of ten
fields and their boxed numbers) and three million seam tuples (~300 B each) in the
driver. :class:`TileRecords` keeps one row of a NumPy structured array per tile (52 B;
a tile's grid position, origin and shape come from the grid, not stored) and
:class:`SeamTable` one row per seam (~31 B in 3D). Both read like the lists they
replace: ``len``, indexing and iteration give the same dicts as before (built on
demand), and the columns are there for vectorized use (``.rows["n_labels"]``).

Examples
--------
>>> from blockbuster.core import TileGrid
>>> recs = TileRecords(TileGrid((16, 16), (8, 8)))
>>> recs.add({"tile": 3, "n_labels": 5, "fn_seconds": 0.25, "skipped": False,
...           "attempts": 1, "resumed": False, "pid": 7})
>>> recs.n_filled, recs[3]["origin"], recs[3]["n_labels"], int(recs.rows["n_labels"].sum())
(1, [8, 8], 5, 5)
>>> seams = SeamTable.from_tuples([(0, 1, (0, 1), 2, 0, 0), (1, 3, (1, 0), 1, 1, 0)], ndim=2)
>>> len(seams), seams[1]
(2, {'tile_a': 1, 'tile_b': 3, 'delta': [1, 0], 'merged': 1, 'unmerged': 1, 'spanning': 0})
>>> seams.merges_per_tile(4).tolist()
[2, 3, 0, 1]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._grid import TileGrid

__all__ = ["TileRecords", "SeamTable", "RECORD_DTYPE", "seam_dtype", "seam_rows"]

#: One tile's record in the driver. Absent optional fields: ``fn_started`` NaN,
#: ``ids_1_to_n`` / ``unit_labels`` / ``unit_pairs`` -1.
RECORD_DTYPE = np.dtype(
    [
        ("n_labels", "<i8"),
        ("fn_seconds", "<f8"),
        ("fn_started", "<f8"),
        ("unit_labels", "<i8"),  # a merge unit: its tiles' labels before joining them
        ("unit_pairs", "<i8"),  # a merge unit: touching pairs joined inside it
        ("pid", "<i4"),
        ("attempts", "<i4"),
        ("skipped", "?"),
        ("resumed", "?"),
        ("ids_1_to_n", "i1"),
        ("filled", "?"),
    ]
)
_EMPTY_ROW = np.zeros((), RECORD_DTYPE)
_EMPTY_ROW["fn_started"] = np.nan
_EMPTY_ROW["unit_labels"] = _EMPTY_ROW["unit_pairs"] = -1
_EMPTY_ROW["ids_1_to_n"] = -1


class TileRecords(Sequence[dict[str, Any]]):
    """Every tile's record (a worker's record dict, kept as one row of
    :data:`RECORD_DTYPE`), in tile order.

    As a sequence it reads like the list of record dicts it replaces: ``recs[n]`` is
    tile ``n``'s dict (``tile``, ``index``, ``origin``, ``shape``, ``n_labels``,
    ``fn_seconds``, ``skipped``, ``attempts``, ``resumed``, ``pid``, and when known
    ``fn_started``, ``ids_1_to_n``, ``unit_labels``, ``unit_pairs``), built when asked.
    What the workers stage for themselves (an overlap merge's band bounds, a merge
    unit's per-tile counts) stays in the staging, not here.

    Parameters
    ----------
    grid : TileGrid
        The run's grid (of merge units, when the run made them): one row per tile.
    """

    def __init__(self, grid: TileGrid) -> None:
        self.grid = grid
        self.rows: NDArray[Any] = np.full(grid.n_tiles, _EMPTY_ROW, RECORD_DTYPE)

    @classmethod
    def of(cls, records: Any, grid: TileGrid) -> TileRecords:
        """``records`` as :class:`TileRecords` (a list of record dicts is converted)."""
        if isinstance(records, cls):
            return records
        out = cls(grid)
        out.add_many(records)
        return out

    def add(self, rec: Mapping[str, Any]) -> None:
        """Keep a worker's record dict (its ``tile`` says which row)."""
        self.add_many((rec,))

    def add_many(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Keep many record dicts (a batch's), in a few NumPy calls."""
        recs = list(records)
        if not recs:
            return
        rows = np.full(len(recs), _EMPTY_ROW, RECORD_DTYPE)
        rows["n_labels"] = [r.get("n_labels", 0) for r in recs]
        rows["fn_seconds"] = [r.get("fn_seconds", 0.0) for r in recs]
        rows["fn_started"] = [r.get("fn_started", np.nan) for r in recs]
        rows["pid"] = [r.get("pid", 0) for r in recs]
        rows["attempts"] = [r.get("attempts", 0) for r in recs]
        rows["skipped"] = [bool(r.get("skipped", False)) for r in recs]
        rows["resumed"] = [bool(r.get("resumed", False)) for r in recs]
        rows["ids_1_to_n"] = [_flag(r.get("ids_1_to_n")) for r in recs]
        rows["unit_labels"] = [_unit_labels(r) for r in recs]
        rows["unit_pairs"] = [r.get("unit_pairs", -1) for r in recs]
        rows["filled"] = True
        self.rows[[int(r["tile"]) for r in recs]] = rows

    def update(self, other: TileRecords) -> None:
        """Take ``other``'s filled rows (the same grid)."""
        self.rows[other.rows["filled"]] = other.rows[other.rows["filled"]]

    def copy(self) -> TileRecords:
        out = TileRecords.__new__(TileRecords)
        out.grid, out.rows = self.grid, self.rows.copy()
        return out

    @property
    def filled(self) -> NDArray[np.bool_]:
        """Which tiles have a record."""
        return self.rows["filled"]

    @property
    def n_filled(self) -> int:
        return int(np.count_nonzero(self.rows["filled"]))

    def tiles(self) -> NDArray[np.intp]:
        """The tile numbers with a record."""
        return np.flatnonzero(self.rows["filled"])

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def __getitem__(self, n: Any) -> Any:
        if isinstance(n, slice):
            return [self[i] for i in range(*n.indices(len(self)))]
        n = int(n)
        if n < 0:
            n += len(self)
        row = self.rows[n]
        if not row["filled"]:
            raise KeyError(f"tile {n} has no record")
        g = self.grid
        bounds = g.core_bounds(n)
        rec: dict[str, Any] = {
            "tile": n,
            "index": list(g.tile_index(n)),
            "origin": [lo for lo, _ in bounds],
            "shape": [hi - lo for lo, hi in bounds],
            "n_labels": int(row["n_labels"]),
            "fn_seconds": float(row["fn_seconds"]),
            "skipped": bool(row["skipped"]),
            "attempts": int(row["attempts"]),
            "resumed": bool(row["resumed"]),
            "pid": int(row["pid"]),
        }
        if not np.isnan(row["fn_started"]):
            rec["fn_started"] = float(row["fn_started"])
        if row["ids_1_to_n"] >= 0:
            rec["ids_1_to_n"] = bool(row["ids_1_to_n"])
        for k in ("unit_labels", "unit_pairs"):
            if row[k] >= 0:
                rec[k] = int(row[k])
        return rec

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for n in self.tiles():
            yield self[n]

    def __repr__(self) -> str:
        return f"TileRecords({self.n_filled} of {len(self)} tiles, {self.nbytes} bytes)"

    def geometry(
        self, tiles: NDArray[np.integer[Any]] | None = None
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
        """Grid positions, origins and core shapes of ``tiles`` (default: all), as
        ``(n, ndim)`` arrays, computed from the grid in a few NumPy calls."""
        g = self.grid
        t = np.arange(len(self)) if tiles is None else np.asarray(tiles, dtype=np.int64)
        index = np.stack(np.unravel_index(t, g.grid_shape), axis=1).astype(np.int64)
        index = index.reshape(len(t), g.ndim)
        origin = index * np.asarray(g.tile_shape, np.int64)
        shape = np.minimum(np.asarray(g.tile_shape, np.int64), np.asarray(g.shape) - origin)
        return index, origin, shape


def _flag(v: Any) -> int:
    return -1 if v is None else int(bool(v))


def _unit_labels(rec: Mapping[str, Any]) -> int:
    counts = rec.get("unit_counts")
    if counts is not None:
        return int(np.sum(counts, dtype=np.int64))
    return int(rec.get("unit_labels", -1))


def seam_dtype(ndim: int) -> np.dtype[Any]:
    """One seam's statistics: the two tiles, their offset, and pairs merged, candidate
    pairs left apart and objects wider than the halo."""
    return np.dtype(
        [
            ("tile_a", "<i8"),
            ("tile_b", "<i8"),
            ("delta", "i1", (ndim,)),
            ("merged", "<i4"),
            ("unmerged", "<i4"),
            ("spanning", "<i4"),
        ]
    )


def seam_rows(seams: Sequence[tuple[Any, ...]], ndim: int) -> NDArray[Any]:
    """``(tile_a, tile_b, delta, merged, unmerged, spanning)`` tuples as rows of
    :func:`seam_dtype` (what a seam-scan batch returns to the driver)."""
    out = np.zeros(len(seams), seam_dtype(ndim))
    if len(seams):
        a, b, d, m, u, s = zip(*seams)
        out["tile_a"], out["tile_b"] = a, b
        out["delta"] = np.asarray(d, np.int8).reshape(len(seams), ndim)
        out["merged"], out["unmerged"], out["spanning"] = m, u, s
    return out


class SeamTable(Sequence[dict[str, Any]]):
    """Per-seam statistics of a run, one row of :func:`seam_dtype` per seam with any
    candidate pair (``summary["seams"]``).

    As a sequence it reads like the list of dicts it replaces: ``seams[i]`` is
    ``{"tile_a", "tile_b", "delta", "merged", "unmerged", "spanning"}``; ``.rows`` holds
    the columns.
    """

    def __init__(self, rows: NDArray[Any]) -> None:
        self.rows = rows

    @classmethod
    def from_tuples(cls, seams: Sequence[tuple[Any, ...]], ndim: int) -> SeamTable:
        return cls(seam_rows(seams, ndim))

    @classmethod
    def concat(cls, parts: Iterable[NDArray[Any]], ndim: int) -> SeamTable:
        """One table of the seam-scan batches' rows (tuples are converted)."""
        arrays = [p if isinstance(p, np.ndarray) else seam_rows(p, ndim) for p in parts]
        arrays = [a for a in arrays if len(a)]
        return cls(np.concatenate(arrays) if arrays else np.zeros(0, seam_dtype(ndim)))

    @classmethod
    def of(cls, seams: Any, ndim: int) -> SeamTable:
        """``seams`` as a :class:`SeamTable` (rows or tuples are converted)."""
        if isinstance(seams, cls):
            return seams
        if isinstance(seams, np.ndarray):
            return cls(seams)
        return cls.from_tuples(list(seams), ndim)

    def merges_per_tile(self, n_tiles: int) -> NDArray[np.int64]:
        """Pairs merged across each tile's seams."""
        r = self.rows
        m = r["merged"].astype(np.int64)
        return np.bincount(r["tile_a"], m, minlength=n_tiles).astype(np.int64) + np.bincount(
            r["tile_b"], m, minlength=n_tiles
        ).astype(np.int64)

    def total(self, column: str) -> int:
        return int(self.rows[column].sum(dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        r = self.rows[i]
        return {
            "tile_a": int(r["tile_a"]),
            "tile_b": int(r["tile_b"]),
            "delta": [int(d) for d in r["delta"]],
            "merged": int(r["merged"]),
            "unmerged": int(r["unmerged"]),
            "spanning": int(r["spanning"]),
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"SeamTable({len(self)} seams, {self.nbytes} bytes)"

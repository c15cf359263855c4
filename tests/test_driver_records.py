"""What the driver holds per tile (issue 17: a million tiles): the records and seam
statistics as NumPy rows, under a bound measured with tracemalloc, read back as the
same dicts, and the per-tile table computed from them equal to one computed from the
dicts the plain way."""

from __future__ import annotations

import csv
import io
import tracemalloc

import numpy as np
import pytest

from blockbuster.cluster import split_batches
from blockbuster.core import SeamTable, TileGrid, TileRecords, seam_rows
from blockbuster.tasks import TABLE_ROWS, tiles_csv
from blockbuster.tasks._report import tile_rows

#: Bytes the driver may hold per tile for its records and seam statistics (3D, three
#: face seams a tile). The rows take ~52 + 3 x 31 B; a dict per record and a tuple per
#: seam took ~1,000 B.
BOUND = 256


def _record(grid: TileGrid, n: int) -> dict:
    """A record as a worker returns it (worker/_tile_ops.py's ``_new_record`` plus what
    the segment stage adds)."""
    return {
        "tile": n,
        "index": list(grid.tile_index(n)),
        "origin": list(grid.origin(n)),
        "shape": list(grid.core_shape(n)),
        "n_labels": 20 + n % 5,
        "fn_seconds": 0.01 + (n % 7) * 1e-3,
        "skipped": n % 11 == 0,
        "attempts": 1,
        "resumed": n % 13 == 0,
        "pid": 4242 + n % 2,
        "fn_started": 1.7e9 + n,
    }


def _seams(grid: TileGrid, tiles) -> list[tuple]:
    return [
        (a, int(b), tuple(d), 1 + (a % 3), a % 2, 0)
        for a in tiles
        for b, d in grid.forward_neighbours(a, max_order=1)
    ]


def test_driver_holds_records_and_seams_in_under_256_bytes_a_tile():
    grid = TileGrid((22 * 8,) * 3, (8, 8, 8))  # 10,648 tiles
    batches = split_batches(list(range(grid.n_tiles)), 2)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        records = TileRecords(grid)
        parts = []
        for b in batches:  # as the segment and scan stages receive the workers' results
            records.add_many([_record(grid, n) for n in b])
            parts.append(seam_rows(_seams(grid, b), grid.ndim))
        seams = SeamTable.concat(parts, grid.ndim)
        del parts
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(seams) == sum(1 for a in range(grid.n_tiles) for _ in grid.forward_neighbours(a, 1))
    per_tile = held / grid.n_tiles
    print(f"{per_tile:.0f} B a tile")
    assert per_tile < BOUND, f"{per_tile:.0f} B a tile held by the driver"
    # the same records and seams, read back as dicts
    for n in (0, 1, 1234, grid.n_tiles - 1):
        assert records[n] == _record(grid, n)
    tuples = _seams(grid, batches[0])
    keys = ("tile_a", "tile_b", "delta", "merged", "unmerged", "spanning")
    for i in (0, 5, len(tuples) - 1):
        a, b, d, *rest = tuples[i]
        assert seams[i] == dict(zip(keys, [a, b, list(d), *rest]))


def _plain_rows(recs: list[dict], seams: list[tuple]) -> list[list[str]]:
    """The per-tile table from the dicts, the obvious way (the oracle)."""
    merges: dict[int, int] = {}
    for a, b, _d, m, _u, _s in seams:
        merges[a] = merges.get(a, 0) + m
        merges[b] = merges.get(b, 0) + m
    return [
        [
            str(r["tile"]),
            str(tuple(r["index"])),
            str(tuple(r["origin"])),
            str(tuple(r["shape"])),
            str(r["n_labels"]),
            str(r["skipped"]),
            str(round(r["fn_seconds"], 4)),
            str(merges.get(r["tile"], 0)),
            str(r["resumed"]),
        ]
        for r in recs
    ]


def test_tile_table_from_rows_equals_the_table_from_dicts():
    grid = TileGrid((50, 37), (8, 8))  # clipped edge tiles
    recs = [_record(grid, n) for n in range(grid.n_tiles)]
    tuples = _seams(grid, range(grid.n_tiles))
    records = TileRecords.of(recs, grid)
    seams = SeamTable.from_tuples(tuples, grid.ndim)
    got = list(csv.reader(io.StringIO(tiles_csv(records, seams).decode())))
    assert got[1:] == _plain_rows(recs, tuples)
    # the capped artifact: the slowest tiles (then most labels, then lowest number)
    limit = 7  # five tiles tie on fn_seconds, then n_labels decides
    want = sorted(recs, key=lambda r: (-r["fn_seconds"], -r["n_labels"], r["tile"]))[:limit]
    rows = tile_rows(records, seams, limit=limit)
    assert [r["tile"] for r in rows] == sorted(r["tile"] for r in want)
    assert len(tile_rows(records, seams, limit=TABLE_ROWS)) == grid.n_tiles


def test_merge_unit_fields_and_absent_fields():
    grid = TileGrid((16,), (8,))
    records = TileRecords(grid)
    records.add({"tile": 1, "n_labels": 3, "unit_counts": [2, 2], "unit_pairs": 1})
    assert records[1]["unit_labels"] == 4 and records[1]["unit_pairs"] == 1
    assert "fn_started" not in records[1] and "ids_1_to_n" not in records[1]
    assert records.n_filled == 1 and list(records.tiles()) == [1]
    assert np.array_equal(records.filled, [False, True])


@pytest.mark.usefixtures("client")
def test_a_run_frees_the_label_pairs_once_the_merge_table_is_built(tmp_path, monkeypatch):
    """The scan's label pairs (16 B a pair) are not held for the rest of the run: not by
    the flow, and not by Prefect's in-memory cache of the stage results."""
    import gc
    import weakref

    import zarr
    from scipy import ndimage as ndi

    import blockbuster.flows._pipeline as pipeline
    import blockbuster.tasks._seams as seams_task
    from blockbuster.api import merge_tile_labels

    refs: list = []
    alive: list[bool] = []
    build, finalize = seams_task.MergeTable.build, pipeline.finalize_stage

    def watched_build(counts, pairs, **kw):
        refs.append(weakref.ref(pairs))
        return build(counts, pairs, **kw)

    def checked_finalize(*args, **kw):
        gc.collect()
        alive.extend(r() is not None for r in refs)
        return finalize(*args, **kw)

    monkeypatch.setattr(seams_task.MergeTable, "build", staticmethod(watched_build))
    monkeypatch.setattr(pipeline, "finalize_stage", checked_finalize)
    rng = np.random.default_rng(1)
    binary = ndi.gaussian_filter(rng.standard_normal((128, 128)), 2) > 0.1
    labels = np.zeros(binary.shape, np.int32)
    for i in range(0, 128, 32):
        for j in range(0, 128, 32):
            labels[i : i + 32, j : j + 32] = ndi.label(binary[i : i + 32, j : j + 32])[0]
    src = str(tmp_path / "in.zarr")
    z = zarr.create_array(store=src, shape=labels.shape, chunks=(32, 32), dtype=labels.dtype)
    z[...] = labels
    _, summary = merge_tile_labels(src, write_to=str(tmp_path / "out.zarr"), return_summary=True)
    assert summary["labels_after_merge"] == ndi.label(binary)[1]
    assert alive == [False], "the label pairs outlived the merge table"

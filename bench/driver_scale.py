"""What the driver holds and spends per tile, at 10^4, 10^5 and 10^6 tiles.

The driver-side work of a run, with blockbuster's own code, on synthetic records:

- plan: the tile grid (``TileGrid``) and the segment stage's batches (``split_batches``);
- records: each segment batch's records arrive as the dicts a worker returns
  (``_new_record`` plus the label count and timing) and are kept as NumPy rows
  (``TileRecords.add_many``, timed); the dicts are dropped;   (SIMULATED: the records
  and seam results are made here, not by workers; no image, no fn, no cluster)
- seams: each seam-scan batch's pairs (int64) and seam rows (``seam_rows``, as
  ``scan_tiles`` returns them), joined into one ``SeamTable`` (timed);
                                                                 (SIMULATED, as above)
- merge table: ``MergeTable.build`` over the pairs, and every tile's lookup table as
  the relabel stage ships them (``table_luts`` per batch, not kept);
- report: the summary's sums (``summary["seams"]`` is the ``SeamTable`` itself), the
  capped per-tile artifact rows (``tile_rows(limit=TABLE_ROWS)``) and the full CSV
  (``tiles_csv``, measured and dropped).

Memory: the process's resident memory (RSS) after each stage minus before the first,
divided by the tile count (allocator slack included; ``tracemalloc`` would be exact but
slows allocation several times over at 10^6 tiles). Time: CPU seconds of the driver thread, for the
driver's own work only (making the simulated records and seam results is not timed; in a
run the driver also unpickles them, which is not measured here). A 3D grid
(tiles of 64^3), 20 labels per tile, one merged pair per face seam (connectivity 1).
Targets: linear, < 1 KiB of driver memory per tile, < 0.1 ms of driver CPU per tile.

    python bench/driver_scale.py [--quick]
"""

from __future__ import annotations

import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

KIB_TARGET = 1024
MS_TARGET = 0.1


def _batch_records(grid, tiles, labels_per_tile: int) -> list[dict]:
    """A segment batch's records, as a worker returns them (SIMULATED)."""
    from blockbuster.worker._tile_ops import _new_record

    class _Plan:  # what _new_record reads of a plan
        pass

    p = _Plan()
    p.grid = grid
    out = []
    for n in tiles:
        r = _new_record(p, n)
        r["n_labels"] = labels_per_tile
        r["fn_seconds"] = 0.01 + (n % 7) * 1e-3
        r["attempts"] = 1
        out.append(r)
    return out


def _batch_seams(grid, tiles, offsets):
    """A seam-scan batch's result, as ``scan_tiles`` returns it (SIMULATED): one merged
    label pair per face seam, the seams as rows of ``seam_dtype``."""
    from blockbuster.core import seam_rows

    seams, pairs = [], []
    for a in tiles:
        for b, delta in grid.forward_neighbours(a, max_order=1):
            seams.append((a, int(b), tuple(delta), 1, 0, 0))
            pairs.append((offsets[a] + 1, offsets[b] + 2))
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2), seam_rows(seams, grid.ndim)


def measure(side: int) -> dict:
    from blockbuster.cluster import split_batches
    from blockbuster.core import MergeTable, SeamTable, TileGrid, TileRecords
    from blockbuster.tasks import TABLE_ROWS, tiles_csv
    from blockbuster.tasks._report import tile_rows as rows_fn
    from blockbuster.worker import table_luts

    t = 64
    shape = (side * t,) * 3
    gc.collect()
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [0]
    out: dict = {"n_tiles": side**3}
    cpu = {}

    def mark(name, spent):
        cpu[name] = spent
        out[f"mem_{name}"] = proc.memory_info().rss - base
        peak[0] = max(peak[0], out[f"mem_{name}"])

    t0 = time.process_time()
    grid = TileGrid(shape, (t, t, t))
    batches = split_batches(list(range(grid.n_tiles)), 16)
    mark("plan", time.process_time() - t0)
    # the segment stage: each batch's record dicts arrive and are kept as rows
    records = TileRecords(grid)
    spent = 0.0
    for b in batches:
        recs = _batch_records(grid, b, 20)  # simulated: a worker's result (not timed)
        t0 = time.process_time()
        records.add_many(recs)
        spent += time.process_time() - t0
    del recs
    mark("records", spent)
    t0 = time.process_time()
    counts = records.rows["n_labels"].astype(np.int64)
    offsets = np.zeros_like(counts)
    np.cumsum(counts[:-1], out=offsets[1:])
    spent = time.process_time() - t0
    # the seam scan: each batch of 64 tiles returns its pairs and seam rows
    results = [
        _batch_seams(grid, b, offsets)
        for b in split_batches(list(range(grid.n_tiles)), 16, max_batch=64)
    ]
    t0 = time.process_time()
    seams = SeamTable.concat((s for _, s in results), grid.ndim)
    pairs = np.concatenate([p for p, _ in results])
    del results
    merged = seams.total("merged")
    mark("seams", spent + time.process_time() - t0)
    t0 = time.process_time()
    table = MergeTable.build(counts, pairs)
    del pairs
    for b in batches:  # the relabel stage's lookup tables, shipped and dropped
        table_luts(table, b, table.dtype)
    mark("table", time.process_time() - t0)
    t0 = time.process_time()
    rows = records.rows
    summary = {
        "n_skipped": int(np.count_nonzero(rows["skipped"])),
        "merged": merged,
        "seams": seams,  # summary["seams"]: the SeamTable itself, no copy
    }
    artifact = rows_fn(records, seams, limit=TABLE_ROWS)
    csv_bytes = len(tiles_csv(records, seams))
    mark("report", time.process_time() - t0)
    out["peak"] = peak[0]
    out["cpu"] = cpu
    out["csv_bytes"] = csv_bytes
    out["held_arrays"] = records.nbytes + seams.nbytes
    del records, seams, artifact, table, summary, batches
    return out


def main() -> int:
    args = C.parse_args(__doc__)
    sides = [10, 22] if args.quick else [22, 47, 100]  # ~10^4, ~10^5, 10^6 tiles
    C.header("driver memory and time per tile (simulated records)", args)
    res = [measure(s) for s in sides]
    stages = ["plan", "records", "seams", "table", "report"]
    rows = []
    for r in res:
        n = r["n_tiles"]
        total_cpu = sum(r["cpu"].values())
        kept = r["mem_report"]
        rows.append(
            [
                f"{n:,}",
                *[
                    f"{(r[f'mem_{s}'] - (r[f'mem_{stages[i - 1]}'] if i else 0)) / n:.0f}"
                    for i, s in enumerate(stages)
                ],
                f"{kept / n:.0f}",
                f"{r['peak'] / n:.0f}",
                *[f"{r['cpu'][s] / n * 1e3:.4f}" for s in stages],
                f"{total_cpu / n * 1e3:.4f}",
                C.verdict(kept / n < KIB_TARGET and total_cpu / n * 1e3 < MS_TARGET),
            ]
        )
    C.table(
        ["tiles"]
        + [f"B/tile {s}" for s in stages]
        + ["B/tile held", "B/tile peak"]
        + [f"ms/tile {s}" for s in stages]
        + ["ms/tile total", f"< {KIB_TARGET} B and < {MS_TARGET} ms"],
        rows,
        title="driver memory (RSS growth, held after each stage) and CPU per tile",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

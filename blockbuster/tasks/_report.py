"""The report stage: Prefect artifacts describing what a run did.

Artifact keys (stable; lowercase as Prefect requires):

- ``blockbuster-tiles``: table, one row per tile (index, origin, shape, labels found,
  skipped, seconds in ``fn``, seam merges, resumed), at most :data:`TABLE_ROWS` rows:
  a run with more tiles shows its slowest tiles there, and the full table is the CSV
  file ``blockbuster-tiles.csv`` inside the output (:func:`tiles_csv`), which the
  artifact's description names. (Prefect stores an artifact in its database and the UI
  renders it whole: a million-row table would be hundreds of MB in both.)
- ``blockbuster-summary``: markdown run summary (image, tiles, skipped fraction, labels
  before and after the merge, time per stage, throughput, where the output is).
- ``blockbuster-progress``: progress of the segment and relabel stages (0-100).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from blockbuster.core import SeamTable, TileRecords

from ._job import Job

__all__ = [
    "publish_tiles_table",
    "publish_summary",
    "tiles_csv",
    "TABLE_ROWS",
    "TILES_CSV",
    "TILES_KEY",
    "SUMMARY_KEY",
    "tile_rows",
    "summary_markdown",
]

TILES_KEY = "blockbuster-tiles"
#: Rows of the per-tile table artifact at most (the full table: ``TILES_CSV``).
TABLE_ROWS = 1000
TILES_CSV = "blockbuster-tiles.csv"
_COLUMNS = (
    "tile",
    "index",
    "origin",
    "shape",
    "labels",
    "skipped",
    "fn_seconds",
    "seam_merges",
    "resumed",
)
SUMMARY_KEY = "blockbuster-summary"


def _selected(records: TileRecords, limit: int | None) -> np.ndarray:
    """The tiles of the table: every tile with a record, or the ``limit`` with the most
    seconds in ``fn`` (then the most labels, then the lowest number), in tile order."""
    tiles = records.tiles()
    if limit is None or tiles.size <= limit:
        return tiles
    rows = records.rows[tiles]
    order = np.lexsort((tiles, -rows["n_labels"], -rows["fn_seconds"]))
    return np.sort(tiles[order[:limit]])


def _columns(
    records: TileRecords, merges: np.ndarray, tiles: np.ndarray
) -> Iterator[tuple[Any, ...]]:
    """The table's rows of ``tiles`` as tuples of Python values (:data:`_COLUMNS`;
    ``merges``: pairs merged across each tile's seams)."""
    index, origin, shape = records.geometry(tiles)
    merges = merges[tiles]
    rows = records.rows[tiles]
    fn_seconds = np.round(rows["fn_seconds"], 4)

    def text(a: np.ndarray) -> list[str]:
        return [str(tuple(r)) for r in a.tolist()]

    return zip(
        tiles.tolist(),
        text(index),
        text(origin),
        text(shape),
        rows["n_labels"].tolist(),
        rows["skipped"].tolist(),
        fn_seconds.tolist(),
        merges.tolist(),
        rows["resumed"].tolist(),
    )


def tile_rows(
    records: TileRecords, seams: SeamTable, limit: int | None = None
) -> list[dict[str, Any]]:
    """The table's rows: every tile, or (``limit``) the ``limit`` tiles with the most
    seconds in ``fn`` (then the most labels), in tile order.

    Examples
    --------
    >>> from blockbuster.core import TileGrid
    >>> recs = TileRecords(TileGrid((40,), (8,)))
    >>> recs.add_many({"tile": i, "n_labels": i, "fn_seconds": 0.1 * (i % 3)} for i in range(5))
    >>> [r["tile"] for r in tile_rows(recs, SeamTable.from_tuples([], 1), limit=2)]
    [2, 4]
    """
    merges = seams.merges_per_tile(len(records))
    return [
        dict(zip(_COLUMNS, row)) for row in _columns(records, merges, _selected(records, limit))
    ]


def tiles_csv(records: TileRecords, seams: SeamTable) -> bytes:
    """The full per-tile table as CSV (one row per tile, written from the records'
    columns: no row objects are kept)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(_COLUMNS)
    tiles = records.tiles()
    merges = seams.merges_per_tile(len(records))
    for i in range(0, tiles.size, 65536):  # Python values for a slice at a time
        w.writerows(_columns(records, merges, tiles[i : i + 65536]))
    return buf.getvalue().encode()


def summary_markdown(summary: dict[str, Any]) -> str:
    t = summary["timings"]
    lines = [
        f"# blockbuster run `{summary['run_key']}`",
        "",
        "| | |",
        "|---|---|",
        f"| image | {summary['image']} |",
        f"| function | `{summary['fn']}` |",
        f"| tiles | {summary['n_tiles']} (grid {summary['grid_shape']}, tile {summary['tile_shape']}, "
        f"overlap {summary['overlap']}) |",
        f"| skipped as empty | {summary['n_skipped']} ({summary['skipped_fraction']:.1%}) |",
        f"| resumed from staging | {summary['n_resumed']} |",
        f"| merge | {summary['merge']} |",
        f"| labels before merge | {summary['labels_before_merge']} |",
        f"| labels after merge | {summary['labels_after_merge']} |",
        f"| seam pairs merged / left apart | {summary['seam_pairs_merged']} / "
        f"{summary['seam_pairs_unmerged']} |",
        f"| objects wider than the halo | {summary['objects_spanning_halo']} |",
        (
            f"| output | `{summary['output']}` ({summary['dtype']}) |"
            if summary["output"] is not None
            else f"| output | an array returned to the caller, no store ({summary['dtype']}) |"
        ),
        f"| throughput | {summary['voxels_per_second']:.3g} voxels/s |",
        "",
        "| stage | seconds |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.2f} |" for k, v in t.items()]
    return "\n".join(lines)


def publish_tiles_table(job: Job, records: TileRecords, seams: SeamTable) -> None:
    """Queue the per-tile table artifact on the run's reporter thread (it is known once
    the merge table is, and is sent while the relabel stage runs)."""
    n = len(records)
    where = job.out.file_path(TILES_CSV) if not job.out.temporary else None
    if n > TABLE_ROWS:
        description = (
            f"Per-tile statistics of run {job.run_key}: the {TABLE_ROWS} slowest of {n} "
            "tiles" + (f"; every tile: {where}" if where else "")
        )
    else:
        description = f"Per-tile statistics of run {job.run_key}"
    job.reporter.submit(
        lambda: create_table_artifact(
            tile_rows(records, seams, limit=TABLE_ROWS),
            key=TILES_KEY,
            description=description,
        )
    )


def publish_summary(job: Job, summary: dict[str, Any]) -> None:
    """Queue the run-summary artifact on the run's reporter thread."""
    job.reporter.submit(
        lambda: create_markdown_artifact(
            summary_markdown(summary), key=SUMMARY_KEY, description=f"Summary of run {job.run_key}"
        )
    )

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
import heapq
import io
from collections import Counter
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

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


def _merges(seams: list[tuple]) -> Counter:
    merges: Counter = Counter()
    for a, b, _delta, merged, _unmerged, _spanning in seams:
        merges[a] += merged
        merges[b] += merged
    return merges


def _row(r: dict[str, Any], merges: Counter) -> dict[str, Any]:
    return {
        "tile": r["tile"],
        "index": str(tuple(r["index"])),
        "origin": str(tuple(r["origin"])),
        "shape": str(tuple(r["shape"])),
        "labels": r["n_labels"],
        "skipped": r["skipped"],
        "fn_seconds": round(float(r["fn_seconds"]), 4),
        "seam_merges": merges[r["tile"]],
        "resumed": r["resumed"],
    }


def tile_rows(
    records: list[dict[str, Any]], seams: list[tuple], limit: int | None = None
) -> list[dict[str, Any]]:
    """The table's rows: every tile, or (``limit``) the ``limit`` tiles with the most
    seconds in ``fn`` (then the most labels), in tile order.

    Examples
    --------
    >>> recs = [{"tile": i, "index": [i], "origin": [8 * i], "shape": [8], "n_labels": i,
    ...          "skipped": False, "fn_seconds": 0.1 * (i % 3), "resumed": False}
    ...         for i in range(5)]
    >>> [r["tile"] for r in tile_rows(recs, [], limit=2)]
    [2, 4]
    """
    merges = _merges(seams)
    if limit is not None and len(records) > limit:
        records = heapq.nlargest(
            limit, records, key=lambda r: (float(r["fn_seconds"]), r["n_labels"])
        )
        records = sorted(records, key=lambda r: r["tile"])
    return [_row(r, merges) for r in records]


def tiles_csv(records: list[dict[str, Any]], seams: list[tuple]) -> bytes:
    """The full per-tile table as CSV (one row per tile, streamed: no row objects are
    kept)."""
    merges = _merges(seams)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(_COLUMNS)
    for r in records:
        w.writerow(_row(r, merges).values())
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
        f"| output | `{summary['output']}` ({summary['dtype']}) |",
        f"| throughput | {summary['voxels_per_second']:.3g} voxels/s |",
        "",
        "| stage | seconds |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.2f} |" for k, v in t.items()]
    return "\n".join(lines)


def publish_tiles_table(job: Job, records: list[dict[str, Any]], seams: list[tuple]) -> None:
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

"""The report stage: Prefect artifacts describing what a run did.

Artifact keys (stable; lowercase as Prefect requires):

- ``blockbuster-tiles``: table, one row per tile (index, origin, shape, labels found,
  skipped, seconds in ``fn``, seam merges, resumed).
- ``blockbuster-summary``: markdown run summary (image, tiles, skipped fraction, labels
  before and after the merge, time per stage, throughput, where the output is).
- ``blockbuster-progress``: progress of the segment and relabel stages (0-100).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from ._job import Job

__all__ = [
    "publish_tiles_table",
    "publish_summary",
    "TILES_KEY",
    "SUMMARY_KEY",
    "tile_rows",
    "summary_markdown",
]

TILES_KEY = "blockbuster-tiles"
SUMMARY_KEY = "blockbuster-summary"


def tile_rows(records: list[dict[str, Any]], seams: list[tuple]) -> list[dict[str, Any]]:
    merges: Counter = Counter()
    for a, b, _delta, merged, _unmerged, _spanning in seams:
        merges[a] += merged
        merges[b] += merged
    return [
        {
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
        for r in records
    ]


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
    job.reporter.submit(
        lambda: create_table_artifact(
            tile_rows(records, seams),
            key=TILES_KEY,
            description=f"Per-tile statistics of run {job.run_key}",
        )
    )


def publish_summary(job: Job, summary: dict[str, Any]) -> None:
    """Queue the run-summary artifact on the run's reporter thread."""
    job.reporter.submit(
        lambda: create_markdown_artifact(
            summary_markdown(summary), key=SUMMARY_KEY, description=f"Summary of run {job.run_key}"
        )
    )

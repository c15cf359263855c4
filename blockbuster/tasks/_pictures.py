"""The pictures of a run: a preview of the labels over the image and a tile map, built on
the cluster, written into the output and published as Prefect artifacts.

- Built on the cluster: the workers read the output (and a stored image) region by
  region, one output chunk or shard at a time, and keep every ``step``-th pixel
  (:func:`blockbuster.worker.sample_regions`; a dask or NumPy image is strided by dask);
  one more task assembles, draws (:mod:`blockbuster.core`) and encodes both pictures
  (:func:`blockbuster.worker.render_pictures`). The driver receives two PNGs, a few
  hundred KB at most: each is at most :data:`~blockbuster.core.MAX_SIDE` pixels on its
  longest side. A 3D image is previewed in its middle plane (not a maximum projection:
  labels of different depths would overwrite each other's colours), and only the tiles
  that cross that plane are read.
- Written into the output, next to its arrays (``blockbuster-preview.png``,
  ``blockbuster-tiles.png``; zarr ignores other files): the output is the one place a
  run is sure it created, so no file of the user's is ever replaced (docs/security.md).
- Published as two markdown artifacts (keys :data:`PREVIEW_KEY`, :data:`TILE_MAP_KEY`)
  holding the picture as a ``data:image/png;base64,...`` image, which the Prefect UI
  renders (measured with Prefect 3.9), with a legend; sent by the run's reporter thread.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from blockbuster.cluster import client_threads, split_batches
from blockbuster.core import TILE_MAP_COLORS, TileGrid, preview_step, slow_tiles
from blockbuster.io import data_url, is_url, write_png
from blockbuster.worker import render_pictures, sample_regions

from ._job import Job

__all__ = [
    "PREVIEW_KEY",
    "TILE_MAP_KEY",
    "PREVIEW_FILE",
    "TILE_MAP_FILE",
    "make_pictures",
    "seam_warnings",
]

log = logging.getLogger("blockbuster")

PREVIEW_KEY = "blockbuster-preview"
TILE_MAP_KEY = "blockbuster-tile-map"
PREVIEW_FILE = "blockbuster-preview.png"
TILE_MAP_FILE = "blockbuster-tiles.png"


def seam_warnings(seams: list[tuple]) -> list[tuple[int, int, str]]:
    """Seams worth a look: objects wider than the halo (they reach its outer edge), or
    many candidate pairs left apart (more than 2 and more than were merged).

    Examples
    --------
    >>> seam_warnings([(0, 1, (0, 1), 5, 0, 0), (1, 2, (0, 1), 1, 4, 0), (2, 3, (1, 0), 3, 0, 2)])
    [(1, 2, '4 candidate pairs left apart'), (2, 3, '2 objects wider than the halo')]
    """
    out = []
    for a, b, _delta, merged, unmerged, spanning in seams:
        why = []
        if unmerged > 2 and unmerged > merged:
            why.append(f"{unmerged} candidate pairs left apart")
        if spanning > 0:
            why.append(f"{spanning} objects wider than the halo")
        if why:
            out.append((int(a), int(b), ", ".join(why)))
    return out


def make_pictures(
    job: Job, records: list[dict[str, Any]], seams: list[tuple], dtype: str
) -> dict[str, Any] | None:
    """Build, write and publish the run's pictures; returns where they are and what they
    cost (``seconds``), or None when they could not be made (logged: pictures never fail
    a run). ``records``: the segment stage's, one per tile (or merge unit); ``seams``:
    the merge table stage's; ``dtype``: the output's."""
    from blockbuster.config import runtime_settings

    if not runtime_settings().pictures:
        return None
    t0 = time.perf_counter()
    try:
        got = _make(job, records, seams, dtype)
    except Exception:
        log.warning("could not make the run's pictures", exc_info=True)
        return None
    got["seconds"] = round(time.perf_counter() - t0, 4)
    job.timings["pictures"] = got["seconds"]
    return got


def _make(
    job: Job, records: list[dict[str, Any]], seams: list[tuple], dtype: str
) -> dict[str, Any]:
    plan, src, out = job.plan, job.source, job.out
    shape = tuple(plan.grid.shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"pictures are drawn for 2D and 3D images, not shape {shape}")
    plane = shape[0] // 2 if len(shape) == 3 else None
    inplane = shape[-2:]
    step = preview_step(inplane)
    preview_shape = tuple(-(-s // step) for s in inplane)
    client = job.client()
    # regions: output chunks, or shards when the output is sharded
    regions_grid = TileGrid(shape, plan.out_shards or plan.out_chunks)
    regions = [
        regions_grid.core_bounds(n)
        for n in range(regions_grid.n_tiles)
        if plane is None
        or regions_grid.core_bounds(n)[0][0] <= plane < regions_grid.core_bounds(n)[0][1]
    ]
    with_image = job.tile_fn is not None  # a merge's input is labels, not an image
    reader = src.reader if with_image and src.kind == "stored" else None
    image_full = None
    if with_image and src.kind != "stored":
        from blockbuster.io import full_slices

        spatial = tuple(slice(None, None, step) for _ in inplane)
        if plane is not None:
            spatial = (plane,) + spatial
        ca = src.channel_axis
        arr = src.dask_array[full_slices(spatial, ca)]
        if ca is not None:  # the plane's integer index drops axis 0 before a later channel
            arr = arr.max(axis=ca if plane is None or ca == 0 else ca - 1)
        if "NumPy array" in src.description:  # in the driver's memory: a strided view
            image_full = arr.compute(scheduler="sync")
        else:
            image_full = client.compute(arr)
    batches = split_batches(list(range(len(regions))), client_threads(client), max_batch=256)
    futures = [
        client.submit(
            sample_regions,
            [regions[i] for i in b],
            step,
            plane,
            out.array_path,
            out.token,
            reader,
            src.channel_axis,
            pure=False,
            key=f"blockbuster-pictures-sample-{job.run_key}-{k}",
        )
        for k, b in enumerate(batches)
    ]
    # the tile map: tiles of the plan's grid (merge units, when the merge made them)
    g = plan.grid
    by_tile = {int(r["tile"]): r for r in records}
    n = g.n_tiles
    labels = [int(by_tile.get(t, {}).get("n_labels", 0)) for t in range(n)]
    secs = [float(by_tile.get(t, {}).get("fn_seconds", 0.0)) for t in range(n)]
    skipped = [bool(by_tile.get(t, {}).get("skipped", False)) for t in range(n)]
    slow = slow_tiles(secs)
    warn = seam_warnings(seams)
    edges_grid = TileGrid(shape, plan.out_chunks)  # tiles (inside merge units too)
    tile_edges = [
        [-(-lo // step) for lo in range(t, s, t)]
        for s, t in zip(inplane, edges_grid.tile_shape[-2:])
    ]
    tile_map = {
        "grid_shape": g.grid_shape,
        "labels": labels,
        "seconds": secs,
        "skipped": skipped,
        "slow": slow,
        "seam_warnings": [(a, b) for a, b, _ in warn],
    }
    rendered = client.submit(
        render_pictures,
        futures,
        preview_shape,
        str(dtype),
        tile_edges,
        tile_map,
        image_full,
        pure=False,
        key=f"blockbuster-pictures-render-{job.run_key}",
    ).result()
    for f in futures:
        f.release()
    files = {}
    if is_url(out.path) and not out.temporary:  # into the output in the object store
        files = {
            "preview": out.write_file(PREVIEW_FILE, rendered["preview"]),
            "tile_map": out.write_file(TILE_MAP_FILE, rendered["tile_map"]),
        }
    elif os.path.isdir(out.path) and not out.temporary:
        files = {
            "preview": write_png(os.path.join(out.path, PREVIEW_FILE), rendered["preview"]),
            "tile_map": write_png(os.path.join(out.path, TILE_MAP_FILE), rendered["tile_map"]),
        }
    how = (
        f"middle plane z = {plane} of {shape[0]}" if plane is not None else "the whole image"
    ) + (f", every {step}th pixel" if step > 1 else ", every pixel")
    info = {
        "files": files,
        "preview_shape": list(rendered["preview_shape"]),
        "tile_map_shape": list(rendered["tile_map_shape"]),
        "preview_bytes": len(rendered["preview"]),
        "tile_map_bytes": len(rendered["tile_map"]),
        "preview_view": how,
        "slow_tiles": slow,
        "seam_warnings": [{"tile_a": a, "tile_b": b, "why": w} for a, b, w in warn],
    }
    _publish(job, rendered, info, with_image, n)
    return info


def _publish(job: Job, rendered: dict, info: dict, with_image: bool, n_tiles: int) -> None:
    from prefect.artifacts import create_markdown_artifact

    over = "over the image" if with_image else "(a merge: the labels alone)"
    files = info["files"]
    preview_md = "\n".join(
        [
            f"# Labels {over}",
            "",
            f"![preview of the labels of run {job.run_key}]({data_url(rendered['preview'])})",
            "",
            f"{info['preview_view']} ({info['preview_shape'][1]} x {info['preview_shape'][0]} px). "
            "Each label has its own colour, outlined; the faint lines are the tile grid.",
            *([f"\nAlso written to `{files['preview']}`."] if files else []),
        ]
    )
    c = TILE_MAP_COLORS
    legend = (
        f"cell colour: labels found in the tile (log scale, dark `{c['few labels']}` few to "
        f"yellow `{c['many labels']}` many; near-black: none); orange bar along the bottom: "
        "seconds in `fn` (full width = the slowest tile); grey with a cross: skipped as empty; "
        "red frame: slow (over 3x the median); magenta line: a seam with warnings."
    )
    warn_lines = [
        f"- tiles {w['tile_a']} / {w['tile_b']}: {w['why']}" for w in info["seam_warnings"][:20]
    ]
    if len(info["seam_warnings"]) > 20:
        warn_lines.append(f"- ... and {len(info['seam_warnings']) - 20} more seams")
    tmap_md = "\n".join(
        [
            f"# Tile map ({n_tiles} {'tiles' if job.plan.unit_tile_shape is None else 'merge units'})",
            "",
            f"![tile map of run {job.run_key}]({data_url(rendered['tile_map'])})",
            "",
            legend,
            "",
            f"Slow tiles: {', '.join(map(str, info['slow_tiles'][:50])) or 'none'}.",
            "",
            "Seams with warnings:" if warn_lines else "Seams with warnings: none.",
            *warn_lines,
            *([f"\nAlso written to `{files['tile_map']}`."] if files else []),
        ]
    )
    job.reporter.submit(
        lambda: create_markdown_artifact(
            preview_md, key=PREVIEW_KEY, description=f"Preview of the labels of run {job.run_key}"
        )
    )
    job.reporter.submit(
        lambda: create_markdown_artifact(
            tmap_md, key=TILE_MAP_KEY, description=f"Tile map of run {job.run_key}"
        )
    )

"""The pictures of a run: a preview of the labels over the image and a tile map, made from
samples the stages took while the tiles were in memory, written into the output and
published as Prefect artifacts.

- Sampled where the tiles already are, so nothing is read again: the segment stage keeps
  every ``step``-th pixel of each image tile it reads (channels reduced by their
  maximum), the relabel stage of each output tile it writes (the final ids, whatever the
  merge: touch, overlap, merge units, ``sequential_labels``); a few KB per tile come back
  with each batch's result (:func:`blockbuster.worker.sample_tile`), into the run's
  :class:`~blockbuster.core.PreviewCanvas` (:func:`preview_canvas`). Skipped tiles are
  background (their output reads as 0); the estimate-empty stage samples the image of
  the empty tiles it reads. The image of tiles no stage read in this run (resumed from
  an earlier run, or a segment stage answered from Prefect's cache) is the one thing
  read again, strided
  (:func:`blockbuster.worker.sample_regions`). Each picture is at most
  :data:`~blockbuster.core.MAX_SIDE` pixels on its longest side. A 3D image is
  previewed in its middle plane (not a maximum projection: labels of different depths
  would overwrite each other's colours): only tiles crossing it are sampled.
- Drawn and encoded (:mod:`blockbuster.core`, :mod:`blockbuster.io`) in a background
  thread of the driver: the tile map and the image's grey levels as soon as the seams
  are scanned (:func:`start_pictures_early`, while the merge table is built and the
  relabel stage runs), the preview as soon as the relabel stage ends
  (:func:`start_pictures`, while the flow writes the tile table and builds the
  summary). The flow waits for it before it marks the output complete, so a complete
  output always holds both PNGs.
- Written into the output, next to its arrays (``blockbuster-preview.png``,
  ``blockbuster-tiles.png``; zarr ignores other files): the output is the one place a
  run is sure it created, so no file of the user's is ever replaced (docs/security.md).
- Published as two markdown artifacts (keys :data:`PREVIEW_KEY`, :data:`TILE_MAP_KEY`)
  holding the picture as a ``data:image/png;base64,...`` image, which the Prefect UI
  renders (measured with Prefect 3.9), with a legend; sent by the run's reporter thread.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from blockbuster.cluster import client_threads, split_batches
from blockbuster.core import (
    TILE_MAP_COLORS,
    PreviewCanvas,
    SeamTable,
    TileGrid,
    TileRecords,
    grey_levels,
    render_tile_map,
    slow_tiles,
)
from blockbuster.io import data_url, encode_png, full_slices, is_url
from blockbuster.worker import preview_png, region_samples, sample_regions

from ._job import Job

__all__ = [
    "PREVIEW_KEY",
    "TILE_MAP_KEY",
    "PREVIEW_FILE",
    "TILE_MAP_FILE",
    "make_pictures",
    "start_pictures",
    "start_pictures_early",
    "preview_canvas",
    "PicturesWork",
    "seam_warnings",
]

log = logging.getLogger("blockbuster")

PREVIEW_KEY = "blockbuster-preview"
TILE_MAP_KEY = "blockbuster-tile-map"
PREVIEW_FILE = "blockbuster-preview.png"
TILE_MAP_FILE = "blockbuster-tiles.png"


def seam_warnings(seams: SeamTable | list[tuple]) -> list[tuple[int, int, str]]:
    """Seams worth a look: objects wider than the halo (they reach its outer edge), or
    many candidate pairs left apart (more than 2 and more than were merged).

    Examples
    --------
    >>> seam_warnings([(0, 1, (0, 1), 5, 0, 0), (1, 2, (0, 1), 1, 4, 0), (2, 3, (1, 0), 3, 0, 2)])
    [(1, 2, '4 candidate pairs left apart'), (2, 3, '2 objects wider than the halo')]
    """
    if not isinstance(seams, SeamTable):
        seams = SeamTable.from_tuples(seams, len(seams[0][2]) if len(seams) else 1)
    r = seams.rows
    # the few seams worth a look, found with NumPy; only they become Python values
    hit = np.flatnonzero(
        ((r["unmerged"] > 2) & (r["unmerged"] > r["merged"])) | (r["spanning"] > 0)
    )
    sel = r[hit]
    out = []
    for a, b, merged, unmerged, spanning in zip(
        sel["tile_a"].tolist(),
        sel["tile_b"].tolist(),
        sel["merged"].tolist(),
        sel["unmerged"].tolist(),
        sel["spanning"].tolist(),
    ):
        why = []
        if unmerged > 2 and unmerged > merged:
            why.append(f"{unmerged} candidate pairs left apart")
        if spanning > 0:
            why.append(f"{spanning} objects wider than the halo")
        if why:
            out.append((int(a), int(b), ", ".join(why)))
    return out


def pictures_are_seen(temporary_output: bool) -> bool:
    """Whether anyone can look at a run's pictures: they go into its output (PNG files
    next to the labels), or the run reports to a Prefect server with a UI (a configured
    ``PREFECT_API_URL``, or the server of ``blockbuster up``, which points this thread's
    settings at itself). Prefect's temporary server serves no UI and is gone when the
    process exits: a run with a temporary output (``compute=True`` without
    ``write_to``) reporting there would draw its pictures and upload them (~1 MB of
    ``data:`` URLs) for nobody, on the machine's cores, while the caller's next call
    runs.

    Examples
    --------
    >>> pictures_are_seen(temporary_output=False)
    True
    """
    if not temporary_output:
        return True
    from ._background import reports_are_seen

    return reports_are_seen()


def preview_canvas(job: Job) -> PreviewCanvas | None:
    """The run's preview canvas, made on first use: None when the run makes no pictures
    (``BLOCKBUSTER_PICTURES=false``, an image neither 2D nor 3D, or nobody to see them:
    :func:`pictures_are_seen`). The segment and relabel stages ask for it to tell their
    workers what to sample. First asked in the calling thread, before the flow run,
    inside the settings that point at ``blockbuster up``'s server when it runs."""
    if job.preview is False:
        from blockbuster.config import runtime_settings

        shape = tuple(job.plan.grid.shape)
        # a merge's preview has no image under its labels: their colours are painted as
        # the relabel stage sends them, and only the outlines wait for the last tile
        paint = job.tile_fn is None
        wanted = runtime_settings().pictures and len(shape) in (2, 3)
        job.preview = (
            PreviewCanvas(shape, paint=paint)
            if wanted and pictures_are_seen(job.out.temporary)
            else None
        )
    return job.preview


class PicturesWork:
    """The run's pictures being made in a background thread of the driver: the tile map,
    the image's grey levels (and any image samples read again) as soon as the seams are
    scanned (:func:`start_pictures_early`), the preview once the relabel stage has sent
    the labels (:func:`start_pictures`); :meth:`result` waits for them."""

    def __init__(self, job: Job, canvas: PreviewCanvas | None, records, seams) -> None:
        self.job, self.canvas = job, canvas
        self.seconds = [0.0, 0.0]  # wall, CPU of the pictures' thread
        self.early: Future | None = None
        self.future: Future | None = None
        if canvas is None:
            return
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="blockbuster-pictures")
        # the flow run's context (contextvars) goes along: the artifacts are the run's
        self.early = self.pool.submit(
            contextvars.copy_context().run, self._timed, _early, job, canvas, records, seams
        )

    def _timed(self, fn, *args):
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return fn(*args)
        finally:
            self.seconds[0] += time.perf_counter() - t0
            self.seconds[1] += time.thread_time() - c0

    def finish(self, dtype: str) -> None:
        """The labels are all here (the relabel stage has ended): draw the preview,
        write both PNGs into the output, publish both."""
        if self.early is None:
            return
        self.future = self.pool.submit(
            contextvars.copy_context().run,
            self._timed,
            _final,
            self.job,
            self.canvas,
            self.early,
            dtype,
        )
        self.pool.shutdown(wait=False)

    def result(self) -> dict[str, Any] | None:
        """Where the pictures are and what they cost, or None (none made; a failure is
        logged: pictures never fail a run). ``job.timings``: ``pictures`` (their own
        seconds in the background thread), ``pictures_cpu`` (its CPU seconds) and
        ``pictures_wait`` (how long the flow waited for them)."""
        if self.future is None:
            return None
        got = self._wait()
        if got is not None:  # the artifacts, sent by the run's reporter thread
            self.job.reporter.submit(got.pop("_publish"))
        return got

    def publish_when_drawn(self) -> None:
        """Wait for the pictures, then publish them, here: for a run that does not wait
        for its pictures (a temporary output, which holds none), called in the run's
        reporter thread (``job.reporter.submit``), which sends the artifacts after the
        call has returned as it sends the run's last ones."""
        got = self._wait()
        if got is not None:
            got.pop("_publish")()

    def _wait(self) -> dict[str, Any] | None:
        if self.future is None:
            return None
        t0 = time.perf_counter()
        try:
            got = self.future.result()
        except Exception:
            log.warning("could not make the run's pictures", exc_info=True)
            return None
        finally:
            self.job.timings["pictures_wait"] = round(time.perf_counter() - t0, 4)
        got["seconds"] = round(self.seconds[0], 4)
        got["cpu_seconds"] = round(self.seconds[1], 4)
        self.job.timings["pictures"] = got["seconds"]
        self.job.timings["pictures_cpu"] = got["cpu_seconds"]
        return got


def start_pictures_early(job: Job, records: TileRecords, seams: SeamTable) -> PicturesWork:
    """Start the run's pictures as soon as the seams are scanned (``records``: the
    segment stage's, one per tile or merge unit; ``seams``: the scan's): in a background
    thread, the tile map is drawn and encoded and the image turned into grey levels
    while the merge table is built and the relabel stage runs. The samples are already
    here (the stages returned them); only what no stage held is read again."""
    old = job.pictures_work  # the stages ran again (a staged record failed its checksum)
    if old is not None and old.early is not None and old.future is None:
        old.pool.shutdown(wait=False)
    work = PicturesWork(job, preview_canvas(job), records, seams)
    job.pictures_work = work
    return work


def start_pictures(job: Job, dtype: str) -> PicturesWork:
    """The relabel stage has ended (``dtype``: the output's): draw the preview, write both
    PNGs into the output and publish them, in the background thread. The flow waits for
    it (:meth:`PicturesWork.result`) before it marks the output complete."""
    work = job.pictures_work
    if work is None:  # pragma: no cover - the flow starts it after the scan
        g = job.plan.grid
        records = TileRecords.of(job.details.get("tiles") or [], g)
        work = start_pictures_early(job, records, SeamTable.of([], g.ndim))
    work.finish(dtype)
    return work


def make_pictures(
    job: Job, records: TileRecords, seams: SeamTable, dtype: str
) -> dict[str, Any] | None:
    """The run's pictures, from start to end, waited for: where they are and what they
    cost (``seconds``), or None when none were made."""
    start_pictures_early(job, records, seams)
    return start_pictures(job, dtype).result()


def _missing_image(job: Job, canvas: PreviewCanvas) -> None:
    """Read again the image samples of the tiles no stage returned: tiles resumed from an
    earlier run, or a segment stage answered from Prefect's cache. The only strided re-read left (of the image; the labels always
    come from the relabel stage)."""
    plan, src = job.plan, job.source
    g = plan.grid
    step, plane = canvas.params
    todo = [
        n
        for n in range(g.n_tiles)
        if n not in canvas.image_tiles
        and region_samples(g.core_bounds(n), step, plane) is not None
    ]
    if not todo:
        return
    log.info("pictures: reading the image of %d tiles again (no stage held it)", len(todo))
    client = job.client()
    ca = src.channel_axis
    if src.kind == "stored":
        batches = split_batches(todo, client_threads(client), max_batch=256)
        futures = [
            client.submit(
                sample_regions,
                [g.core_bounds(n) for n in b],
                step,
                plane,
                None,
                "",
                src.reader,
                ca,
                pure=False,
                key=f"blockbuster-pictures-sample-{job.run_key}-{k}",
            )
            for k, b in enumerate(batches)
        ]
        for b, f in zip(batches, futures):
            for n, (at, _, img) in zip(b, f.result()):
                canvas.add_image(n, at, img)
            f.release()
        return
    arr = src.dask_array
    parts = []
    for n in todo:
        region = region_samples(g.core_bounds(n), step, plane)
        if region is None:  # not reached: todo holds only tiles with samples
            continue
        read, pick, at = region
        part = arr[full_slices(read, ca)]
        if ca is not None:
            part = part.max(axis=ca)
        parts.append((n, at, part[pick]))
    if "NumPy array" in src.description:  # in the driver's memory: strided views
        got = [p.compute(scheduler="sync") for _, _, p in parts]
    else:
        got = client.gather(client.compute([p for _, _, p in parts]))
    for (n, at, _), img in zip(parts, got):
        canvas.add_image(n, at, np.asarray(img))


def _early(
    job: Job, canvas: PreviewCanvas, records: TileRecords, seams: SeamTable
) -> dict[str, Any]:
    """What needs no label: the tile map (drawn, encoded) and the image's grey levels."""
    plan = job.plan
    with_image = job.tile_fn is not None  # a merge's input is labels, not an image
    if with_image:
        _missing_image(job, canvas)
    # the tile map: tiles of the plan's grid (merge units, when the merge made them)
    g = plan.grid
    rows = TileRecords.of(records, g).rows  # a tile without a record: zeros
    secs = rows["fn_seconds"]
    slow = slow_tiles(secs)
    warn = seam_warnings(SeamTable.of(seams, g.ndim))
    tmap = render_tile_map(
        g.grid_shape,
        labels=rows["n_labels"],
        seconds=secs,
        skipped=rows["skipped"],
        slow=slow,
        seam_warnings=[(a, b) for a, b, _ in warn],
    )
    grey = None
    if with_image and canvas.image is not None:
        grey = grey_levels(canvas.image)
    return {
        "tile_map": encode_png(tmap),
        "tile_map_shape": tmap.shape[:2],
        "grey": grey,
        "slow": slow,
        "warn": warn,
        "with_image": with_image,
    }


def _final(job: Job, canvas: PreviewCanvas, early: Future, dtype: str) -> dict[str, Any]:
    """Draw and encode the preview, write both PNGs into the output, publish both."""
    first = early.result()
    plan, out = job.plan, job.out
    shape = tuple(plan.grid.shape)
    step, plane = canvas.params
    edges_grid = TileGrid(shape, plan.out_chunks)  # tiles (inside merge units too)
    tile_edges = [
        [-(-lo // step) for lo in range(t, s, t)]
        for s, t in zip(shape[-2:], edges_grid.tile_shape[-2:])
    ]
    lab = canvas.labels
    if lab is None:  # no tile has labels
        lab = np.zeros(canvas.shape, np.dtype(dtype))
    # a merge's preview (no image under the labels) was painted batch by batch as the
    # relabel stage sent them: what no batch painted yet, then outlines and grid
    canvas.paint_pending()
    png, shape2 = preview_png(
        lab, grey=first["grey"], tile_edges=tile_edges, painted=canvas.painted
    )
    rendered = {
        "preview": png,
        "preview_shape": shape2,
        "tile_map": first["tile_map"],
        "tile_map_shape": first["tile_map_shape"],
    }
    files = {}
    if not out.temporary and (is_url(out.path) or os.path.isdir(out.path)):
        # into the output (a folder, or the prefix in an object store): fsync-ed by
        # mark_complete before the output is marked complete
        files = {
            "preview": out.write_file(PREVIEW_FILE, rendered["preview"]),
            "tile_map": out.write_file(TILE_MAP_FILE, rendered["tile_map"]),
        }
    how = (
        f"middle plane z = {plane} of {shape[0]}" if plane is not None else "the whole image"
    ) + (f", every {step}th pixel" if step > 1 else ", every pixel")
    warn = first["warn"]
    info = {
        "files": files,
        "preview_shape": list(rendered["preview_shape"]),
        "tile_map_shape": list(rendered["tile_map_shape"]),
        "preview_bytes": len(rendered["preview"]),
        "tile_map_bytes": len(rendered["tile_map"]),
        "preview_view": how,
        "slow_tiles": first["slow"],
        "seam_warnings": [{"tile_a": a, "tile_b": b, "why": w} for a, b, w in warn],
    }
    info["_publish"] = functools.partial(
        _publish, job, rendered, info, first["with_image"], plan.grid.n_tiles
    )
    return info


def _publish(job: Job, rendered: dict, info: dict, with_image: bool, n_tiles: int) -> None:
    """Create both artifacts, here (in the reporter's thread: see ``PicturesWork``)."""
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
    create_markdown_artifact(
        preview_md, key=PREVIEW_KEY, description=f"Preview of the labels of run {job.run_key}"
    )
    create_markdown_artifact(
        tmap_md, key=TILE_MAP_KEY, description=f"Tile map of run {job.run_key}"
    )

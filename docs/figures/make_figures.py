"""Make the figures of docs/how-it-works.md from a real run (regenerate them with this).

A 512 x 512 synthetic nuclei image, tiles of 128 x 128: each tile is labelled on its own
with the built-in ``threshold`` segmenter (Otsu's threshold of the whole image,
smoothing 1 px, objects of at least 20 px; what the segment stage stages: ids restart
at 1 in every tile), then ``merge_tile_labels`` merges them: a real run, on a real
local cluster, whose output and pictures are drawn here.

Usage: ``python docs/figures/make_figures.py`` (writes docs/figures/*.png, ~1 minute).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SIZE, TILE, HALO = 512, 128, 16
RED, WHITE, MAGENTA = (230, 40, 40), (255, 255, 255), (255, 0, 255)


def rect(rgb: np.ndarray, y0: int, y1: int, x0: int, x1: int, color, width: int = 2) -> None:
    """Draw the outline of [y0, y1) x [x0, x1)."""
    h, w = rgb.shape[:2]
    y0, y1, x0, x1 = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
    rgb[y0 : y0 + width, x0:x1] = color
    rgb[y1 - width : y1, x0:x1] = color
    rgb[y0:y1, x0 : x0 + width] = color
    rgb[y0:y1, x1 - width : x1] = color


def per_tile_labels(img: np.ndarray, thr: float) -> np.ndarray:
    """What the segment stage stages: every tile labelled on its own (ids from 1), by
    the built-in threshold segmenter."""
    from blockbuster.segmenters import get_segmenter

    fn = get_segmenter("threshold", threshold=thr, smooth_sigma=1.0, min_size=20)
    out = np.zeros(img.shape, np.int32)
    for y in range(0, SIZE, TILE):
        for x in range(0, SIZE, TILE):
            out[y : y + TILE, x : x + TILE] = fn(img[y : y + TILE, x : x + TILE])
    return out


def save(rgb: np.ndarray, name: str) -> None:
    from blockbuster.io import encode_png, write_png

    path = write_png(os.path.join(HERE, name), encode_png(rgb))
    print("wrote", os.path.relpath(path))


def main() -> None:
    from blockbuster import merge_tile_labels
    from blockbuster.core import render_preview
    from blockbuster.synthetic import synthetic_nuclei

    image, _truth = synthetic_nuclei((SIZE, SIZE), seed=7, density=0.35)
    img = image.astype(np.float32)
    from skimage.filters import threshold_otsu

    thr = float(threshold_otsu(img))
    edges = [list(range(TILE, SIZE, TILE))] * 2

    # 1. tiles and halos
    rgb = render_preview(img, np.zeros(img.shape, np.uint8), tile_edges=edges, grid_alpha=0.6)
    y, x = TILE, TILE  # tile (1, 1)
    rect(rgb, y - HALO, y + TILE + HALO, x - HALO, x + TILE + HALO, WHITE, 1)
    rect(rgb, y, y + TILE, x, x + TILE, RED, 2)
    save(rgb, "tiles-and-halos.png")

    # 2. what is staged: labels per tile, ids restart in every tile
    local = per_tile_labels(img, thr)
    tile_of = (np.arange(SIZE)[:, None] // TILE) * (SIZE // TILE) + np.arange(SIZE)[None] // TILE
    colour_ids = np.where(local > 0, tile_of * 1000 + local, 0)  # a colour per (tile, id)
    save(render_preview(img, colour_ids, tile_edges=edges), "staged-per-tile.png")

    # 3. the seam scan: label pairs touching across each seam
    rgb = render_preview(img, colour_ids, tile_edges=edges)
    n_pairs = 0
    for s in range(TILE, SIZE, TILE):
        for axis in (0, 1):
            a = colour_ids[s - 1] if axis == 0 else colour_ids[:, s - 1]
            b = colour_ids[s] if axis == 0 else colour_ids[:, s]
            hit = np.flatnonzero((a > 0) & (b > 0))  # labels facing each other (face rule)
            n_pairs += len({(int(a[p]), int(b[p])) for p in hit})
            for p in hit:
                yy, xx = (s, p) if axis == 0 else (p, s)
                rgb[max(yy - 1, 0) : yy + 1, max(xx - 1, 0) : xx + 1] = MAGENTA
    save(rgb, "seam-scan.png")
    print(f"seam scan: {n_pairs} label pairs touch across the seams")

    # 4 and 5. the real run: merge the per-tile labels; its output and its pictures
    work = tempfile.mkdtemp(prefix="blockbuster-figures-")
    try:
        import zarr

        src = os.path.join(work, "per-tile.zarr")
        zarr.create_array(store=src, data=local, chunks=(TILE, TILE))
        out = os.path.join(work, "labels.zarr")
        merged, summary = merge_tile_labels(src, write_to=out, compute=True, return_summary=True)
        save(render_preview(img, merged, tile_edges=edges), "merged.png")
        for key, name in (("preview", "run-preview.png"), ("tile_map", "run-tile-map.png")):
            shutil.copy(summary["pictures"]["files"][key], os.path.join(HERE, name))
            print("wrote", os.path.relpath(os.path.join(HERE, name)))
        print(
            f"{summary['n_tiles']} tiles: {summary['labels_before_merge']} labels per tile -> "
            f"{summary['labels_after_merge']} after the merge "
            f"({summary['seam_pairs_merged']} seam pairs merged)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

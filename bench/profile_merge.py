"""Where a merge's time goes: the worker functions run in this process, profiled.

Runs what ``merge_tile_labels(path)`` sends to the workers (``segment_tiles``,
``scan_tiles``, ``relabel_tiles`` from ``blockbuster.worker``) over all tiles of
the stored per-tile labels, in one process with no Dask or Prefect, and prints for each
stage: seconds per tile and the top functions by own time (cProfile). For comparison it
times the floor's per-chunk work (read one chunk, write one chunk with zarr) the same way.

    python bench/profile_merge.py [--tile 128] [--n 8192] [--top 12]
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def profiled(label, fn, ntiles, top):
    pr = cProfile.Profile()
    t0 = time.perf_counter()
    pr.enable()
    out = fn()
    pr.disable()
    dt = time.perf_counter() - t0
    print(
        f"\n## {label}: {dt:.2f} s in one process, {1e3 * dt / ntiles:.2f} ms per tile "
        f"(profiled; unprofiled is somewhat faster)"
    )
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(top)
    lines = s.getvalue().splitlines()
    start = next(i for i, ln in enumerate(lines) if "ncalls" in ln)
    print("\n".join(lines[start : start + top + 1]))
    return out, dt


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--top", type=int, default=12)
    a = p.parse_args()
    import numpy as np
    import zarr

    from blockbuster.core import MergeTable, make_plan
    from blockbuster.io import Staging, open_image
    from blockbuster.worker import relabel_tiles, scan_tiles, segment_tiles, table_luts

    path = C.tile_labels_path(a.n, a.tile)
    src = open_image(path)
    plan = make_plan(
        src,
        fn_id="merge-only",
        tile_shape=(a.tile, a.tile),
        overlap=0,
        merge="touch",
        connectivity=1,
        retries=0,
    )
    root = C.scratch("profile-staging")
    out_path = C.scratch("profile-out.zarr")
    plan = dataclasses.replace(plan, staging_root=root)
    Staging(root).prepare({"run_key": plan.run_key})
    nt = plan.grid.n_tiles
    tiles = list(range(nt))
    print(f"# profile of the merge's worker functions: {a.n} x {a.n}, tile {a.tile} ({nt} tiles)")

    recs, t_seg = profiled(
        "segment_tiles (read chunk, compact, faces, staging record)",
        lambda: segment_tiles(plan, None, tiles, src.reader),
        nt,
        a.top,
    )
    counts = np.array([r["n_labels"] for r in recs], np.int64)
    offsets = np.zeros_like(counts)
    np.cumsum(counts[:-1], out=offsets[1:])
    # the stage splits tiles into batches of <= 64; each batch re-reads its neighbours
    batches = [tiles[i : i + 64] for i in range(0, nt, 64)]
    res, t_scan = profiled(
        "scan_tiles (read faces from staging, touch pairs), batches of 64",
        lambda: [scan_tiles(plan, b, counts, offsets) for b in batches],
        nt,
        a.top,
    )
    pairs = np.concatenate([p for p, _ in res if len(p)])
    table = MergeTable.build(counts, pairs)
    from blockbuster.io import OutputTarget

    out = OutputTarget(out_path)
    out.create(plan.grid.shape, table.dtype, plan.grid.tile_shape, {})
    luts = table_luts(table, tiles, table.dtype)
    _, t_rel = profiled(
        "relabel_tiles (read staged labels, map, write chunk)",
        lambda: relabel_tiles(plan, tiles, luts, out.array_path, out.token),
        nt,
        a.top,
    )

    # the floor's per-chunk work, same process
    zin = zarr.open_array(path, mode="r")
    floor_out = C.scratch("profile-floor.zarr")
    zout = zarr.create_array(
        store=floor_out, shape=zin.shape, chunks=zin.chunks, dtype=zin.dtype, fill_value=0
    )
    slices = [plan.grid.core_slices(n) for n in tiles]
    t0 = time.perf_counter()
    blocks = [zin[s] for s in slices]
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    for s, b in zip(slices, blocks):
        zout[s] = b
    t_write = time.perf_counter() - t0
    from blockbuster.core import present_ids

    t0 = time.perf_counter()
    for b in blocks:
        present_ids(b)
    t_ids = time.perf_counter() - t0
    st = Staging(root)
    t0 = time.perf_counter()
    for n in tiles:
        st.read_tile(n)
    t_side = time.perf_counter() - t0
    # what creating a file costs here (the floor and ours both create one per chunk)
    probe = C.scratch("profile-create")
    os.makedirs(probe)
    t0 = time.perf_counter()
    for i in range(200):
        with open(os.path.join(probe, str(i)), "wb") as f:
            f.write(b"x" * 1000)
    t_create = (time.perf_counter() - t0) / 200
    rows = [
        ["create a 1 kB file in the benchmark's output directory", f"{1e3 * t_create:.2f}"],
        ["zarr read one chunk", f"{1e3 * t_read / nt:.2f}"],
        ["zarr write one chunk", f"{1e3 * t_write / nt:.2f}"],
        ["present_ids (bincount) of one chunk", f"{1e3 * t_ids / nt:.2f}"],
        ["read one staged tile (all arrays, LZ4)", f"{1e3 * t_side / nt:.2f}"],
        ["segment_tiles per tile (profiled)", f"{1e3 * t_seg / nt:.2f}"],
        ["scan_tiles per tile (profiled)", f"{1e3 * t_scan / nt:.2f}"],
        ["relabel_tiles per tile (profiled)", f"{1e3 * t_rel / nt:.2f}"],
    ]
    C.table(
        ["unprofiled unless noted, one process", "ms per tile"],
        rows,
        title=f"per-tile costs, tile {a.tile}x{a.tile}",
    )
    C.drop_outputs()
    return 0


if __name__ == "__main__":
    sys.exit(main())

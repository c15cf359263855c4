"""Merge of per-tile labels vs the I/O floor (a plain dask copy of the same array).

For an N x N image (8192 x 8192; ``--quick``: 2048 x 2048) whose per-tile labels are
stored as zarr with chunks = tiles, at several tile counts:

- ours: ``merge_tile_labels(path, write_to=out)`` (warm: client and Prefect already up);
- floor: ``da.from_zarr(path).to_zarr(out2)`` on the same client, same chunks and codec.

Each measurement is repeated (median reported; ours and the floor alternate). Target:
ours within 1.5x of the floor at every tile count. Also prints ours' per-stage timings.

    python bench/merge.py [--quick] [--repeats 3]
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

TARGET = 1.5


def main() -> int:
    args = C.parse_args(__doc__)
    n = 2048 if args.quick else 8192
    tiles = [256, 128] if args.quick else [1024, 512, 256, 128]
    C.header(f"merge_tile_labels vs I/O floor, {n} x {n}", args)
    paths = {t: C.tile_labels_path(n, t) for t in tiles}
    truth = C.data_stats(n)
    print(
        f"data: foreground {truth['foreground']:.1%}, {truth['objects']} objects "
        f"(whole-image scipy label), mean area {truth['mean_area']:.0f} px",
        flush=True,
    )

    import dask.array as da

    from blockbuster.api import merge_tile_labels

    client, cluster = C.make_client()
    try:
        print(f"warm-up: {C.warm_up(client):.1f} s", flush=True)
        results = {}
        # the fixed cost of one call: a 512 x 512 array of 4 tiles
        tiny = C.tile_labels_path(512, 256)
        fixed = []
        for _ in range(args.repeats):
            out = C.fresh("merge-tiny.zarr")
            t0 = time.perf_counter()
            merge_tile_labels(tiny, write_to=out)
            fixed.append(time.perf_counter() - t0)
            C.discard(out)
        print(f"  fixed cost (512 x 512, 4 tiles): {C.median(fixed):.2f} s", flush=True)
        for t in tiles:
            path = paths[t]
            ours, floor, stages, nlab, load = [], [], [], None, []
            for r in range(args.repeats):
                for which in ("floor", "ours") if r % 2 == 0 else ("ours", "floor"):
                    out = C.fresh(f"merge-{which}.zarr")
                    meter = C.OtherLoad().start()
                    if which == "floor":
                        t0 = time.perf_counter()
                        da.from_zarr(path).to_zarr(out)
                        floor.append(time.perf_counter() - t0)
                    else:
                        t0 = time.perf_counter()
                        _, summ = merge_tile_labels(path, write_to=out, return_summary=True)
                        ours.append(time.perf_counter() - t0)
                        stages.append(summ["timings"])
                        nlab = summ["labels_after_merge"]
                    load.append(meter.stop())
                    C.discard(out)
                    C.settle(client)  # the next measurement starts with nothing left over
            st = {
                k: C.median([s.get(k, 0.0) for s in stages])
                for k in ("segment", "seams", "lut", "relabel", "total")
            }
            results[t] = {
                "n_tiles": (n // t) ** 2,
                "ours": C.median(ours),
                "floor": C.median(floor),
                "ours_all": ours,
                "floor_all": floor,
                "stages": st,
                "labels": nlab,
                "other_load": C.median(load),
            }
            res = results[t]
            print(
                f"  tile {t}: ours {res['ours']:.2f} s, floor {res['floor']:.2f} s, "
                f"ratio {res['ours'] / res['floor']:.2f}x, labels {nlab} "
                f"(truth {truth['objects']})",
                flush=True,
            )
    finally:
        client.close()
        cluster.close()
        C.drop_outputs()

    rows, srows, ok_all = [], [], True
    for t in tiles:
        r = results[t]
        ratio = r["ours"] / r["floor"]
        ok = ratio <= TARGET
        ok_all &= ok
        rows.append(
            [
                r["n_tiles"],
                f"{t}x{t}",
                C.fmt_s(r["floor"]),
                C.fmt_s(r["ours"]),
                f"{ratio:.2f}x",
                C.verdict(ok),
                "yes" if r["labels"] == truth["objects"] else f"NO ({r['labels']})",
                f"{r['other_load']:.2f}",
            ]
        )
        s = r["stages"]
        srows.append(
            [
                r["n_tiles"],
                C.fmt_s(s["segment"]),
                C.fmt_s(s["seams"]),
                C.fmt_s(s["lut"]),
                C.fmt_s(s["relabel"]),
                C.fmt_s(s["total"]),
                C.fmt_s(r["ours"] - s["total"]),
                C.fmt_s(r["ours"]),
            ]
        )
    C.table(
        [
            "tiles",
            "tile",
            "floor s (dask copy)",
            "ours s (merge_tile_labels)",
            "ours/floor",
            f"target <= {TARGET}x",
            "label count = scipy",
            "other processes' load, cores",
        ],
        rows,
        title=f"merge vs I/O floor, {n} x {n} int32, median of {args.repeats}",
    )
    C.table(
        [
            "tiles",
            "segment (read, index, stage faces)",
            "seams",
            "lut",
            "relabel (read again, map, write chunk)",
            "stages total",
            "outside stages",
            "wall",
        ],
        srows,
        title="ours, per-stage seconds (median)",
    )
    print(
        f"\nfixed cost of one warm merge_tile_labels call (512 x 512, 4 tiles): "
        f"{C.median(fixed):.2f} s"
    )
    print(
        f"\ntarget (ours within {TARGET}x of the floor at every tile count): {C.verdict(ok_all)}"
    )
    with open(
        os.path.join(C.DATA, f"results-merge{'-quick' if args.quick else ''}.json"), "w"
    ) as f:
        json.dump({"n": n, "truth": truth, "results": results, "fixed": fixed}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

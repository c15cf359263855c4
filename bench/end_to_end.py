"""tile_process end to end vs a plain dask map_blocks of the same per-tile function.

A cheap per-tile function (threshold + ``scipy.ndimage.label``; module-level, so it
pickles by reference) on the 8192 x 8192 uint16 image stored as zarr with 256 x 256
chunks, at 1024 tiles of 256 x 256 (``--quick``: 2048 x 2048, 256 tiles of 128 x 128):

- ours: ``tile_process(image, fn, tile_shape=(256, 256), write_to=out)``: segment, seams,
  merge table, relabel — globally consistent labels;
- baseline: ``da.from_zarr(image).map_blocks(fn, dtype=np.int32).to_zarr(out)`` — the same
  fn on the same tiles, no merge at all (labels restart in every tile).

Warm (client and Prefect already up), same cluster, same codec, median of repeats.
Targets: ours under 1.5x the baseline; Prefect orchestration overhead (wall time of the
call minus the sum of the stage tasks' own times) under 5 % of the run at 1000+ tiles.

    python bench/end_to_end.py [--quick] [--repeats 3]
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

TARGET = 1.5
OVERHEAD_TARGET = 0.05
STAGES = ("segment", "seams", "lut", "relabel")


def main() -> int:
    args = C.parse_args(__doc__)
    n, t = (2048, 128) if args.quick else (8192, 256)
    C.header(f"tile_process vs map_blocks, {n} x {n}, tiles {t} x {t}", args)
    img = C.image_path(n, t)
    truth = C.data_stats(n)
    print(f"data: foreground {truth['foreground']:.1%}, {truth['objects']} objects", flush=True)

    import dask.array as da
    import numpy as np

    from blockbuster.api import tile_process

    fn = C.threshold_label

    client, cluster = C.make_client()
    ours, base, stages, load, nlab = [], [], [], [], None
    try:
        print(f"warm-up: {C.warm_up(client):.1f} s", flush=True)
        for r in range(args.repeats):
            for which in ("baseline", "ours") if r % 2 == 0 else ("ours", "baseline"):
                out = C.fresh(f"e2e-{which}.zarr")
                meter = C.OtherLoad().start()
                t0 = time.perf_counter()
                if which == "baseline":
                    da.from_zarr(img).map_blocks(fn, dtype=np.int32).to_zarr(out)
                    base.append(time.perf_counter() - t0)
                else:
                    _, summ = tile_process(
                        img, fn, tile_shape=(t, t), write_to=out, return_summary=True
                    )
                    ours.append(time.perf_counter() - t0)
                    stages.append(summ["timings"])
                    nlab = summ["labels_after_merge"]
                load.append(meter.stop())
                C.discard(out)
                C.settle(client)  # the next measurement starts with nothing left over
                print(f"  {which}: {(ours if which == 'ours' else base)[-1]:.2f} s", flush=True)
    finally:
        client.close()
        cluster.close()
        C.drop_outputs()

    n_tiles = (n // t) ** 2
    o, b = C.median(ours), C.median(base)
    over = [w - sum(s.get(k, 0.0) for k in STAGES) for w, s in zip(ours, stages)]
    frac = [x / w for x, w in zip(over, ours)]
    st = {k: C.median([s.get(k, 0.0) for s in stages]) for k in (*STAGES, "total")}
    ok1 = o / b <= TARGET
    ok2 = C.median(frac) <= OVERHEAD_TARGET
    C.table(
        [
            "tiles",
            "baseline s (map_blocks + to_zarr)",
            "ours s (tile_process)",
            "ours/baseline",
            f"target <= {TARGET}x",
            "label count = scipy",
            "other load, cores",
        ],
        [
            [
                n_tiles,
                C.fmt_s(b),
                C.fmt_s(o),
                f"{o / b:.2f}x",
                C.verdict(ok1),
                "yes" if nlab == truth["objects"] else f"NO ({nlab})",
                f"{C.median(load):.2f}",
            ]
        ],
        title=f"end to end, {n} x {n} uint16, tiles {t} x {t}, median of {args.repeats}",
    )
    C.table(
        [
            "segment",
            "seams",
            "lut",
            "relabel",
            "sum of stages",
            "wall",
            "orchestration (wall - stages)",
            "fraction of run",
            f"target < {OVERHEAD_TARGET:.0%}",
        ],
        [
            [
                C.fmt_s(st["segment"]),
                C.fmt_s(st["seams"]),
                C.fmt_s(st["lut"]),
                C.fmt_s(st["relabel"]),
                C.fmt_s(sum(st[k] for k in STAGES)),
                C.fmt_s(o),
                C.fmt_s(C.median(over)),
                f"{C.median(frac):.1%}",
                C.verdict(ok2),
            ]
        ],
        title="ours, per-stage seconds and Prefect orchestration overhead (medians)",
    )
    print(
        f"\ntargets: ours/baseline <= {TARGET}x: {C.verdict(ok1)}; orchestration < "
        f"{OVERHEAD_TARGET:.0%} of the run: {C.verdict(ok2)}"
    )
    with open(os.path.join(C.DATA, f"results-e2e{'-quick' if args.quick else ''}.json"), "w") as f:
        json.dump(
            {
                "n": n,
                "tile": t,
                "ours": ours,
                "baseline": base,
                "stages": stages,
                "overhead": over,
                "truth": truth,
                "labels": nlab,
                "load": load,
            },
            f,
            indent=1,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

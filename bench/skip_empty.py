"""skip_empty on a mostly-empty image: tile_process with and without skipping empty tiles.

A 4096 x 4096 uint16 zarr (chunks 256 x 256; ``--quick``: 1024 x 1024) made by
``write_synthetic_zarr(kind="sparse", corner_fraction=CORNER)``: synthetic nuclei in the
top-left corner box only, exactly 0 elsewhere. ``CORNER`` = 0.3125 puts the box edge on a
tile boundary (1280 = 5 x 256), so about 10 % of the 256 x 256 tiles hold anything; the
real fraction of non-empty tiles (max of the tile core > ``EMPTY``) is measured and printed.

Segmenter ``watershed(threshold=0.3*65535, min_distance=6)``, tiles 256 x 256, overlap 0:

- skip: ``tile_process(..., skip_empty=True, empty_threshold=0.3*65535)``;
- full: the same call without skipping (``fn`` runs on every tile).

Wall time of the call (client and Prefect warm), median of repeats, the two alternating.
Target: skip / full under 0.2x. Also prints the per-stage timings of both, and checks that
the labels of both runs are the same partition on the non-empty tiles (and background on
the empty ones).

The target is judged on the ``cellpose`` case: the ``noise`` image (below) at 2048 x 2048
with 128 x 128 tiles (the same 9.8 % of tiles non-empty) segmented by
``cellpose_fn`` (Cellpose 3 on CPU, a randomly initialised network of the standard
architecture saved to a temporary file: its cost per tile is that of the real model,
its labels are meaningless; ``bsize=128`` so a tile is one network pass). A network
costs the same on an empty tile as on a full one, which is why users skip background
(and why GPUs are the scarce resource). Run once each way (the full run takes ~1 min).

The watershed cases are context (no target): they show that skipping saves what ``fn``
spends on empty tiles, and nothing when that is nothing:

- ``noise``: the ``outside="noise"`` variant of the image (the noisy background of the
  corner box everywhere instead of exact zeros), same segmenter;
- ``noise-otsu``: that image with ``watershed(threshold=None, min_distance=6)`` (Otsu's
  threshold per tile): a segmenter whose cost does not drop on an empty tile (Otsu splits
  the noise, so it segments noise; run once, its full run takes minutes; only with
  ``--otsu``). The labels of the two runs differ there by design (the full run labels
  noise), so the partition check is only informative.

    python bench/skip_empty.py [--quick] [--repeats 3] [--otsu]
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
import numpy as np  # noqa: E402

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # no per-task INFO lines

TARGET = 0.2
CORNER = 0.3125
TILE = 256
SCALE = 65535
EMPTY = 0.3 * SCALE  # the empty threshold and the segmenter's threshold
SEED = 0
OUT = os.path.join(C.DATA, "out-skip-empty")  # our own scratch dir (not C.scratch's)
STAGES = ("segment", "seams", "lut", "relabel")


def image_path(n: int, outside: str, tile: int = TILE) -> str:
    from blockbuster.synthetic import write_synthetic_zarr

    os.makedirs(C.DATA, exist_ok=True)
    path = os.path.join(C.DATA, f"sparse-{outside}-{n}-c{tile}-f{CORNER}.zarr")
    if not os.path.exists(path):
        t0 = time.perf_counter()
        tmp = path + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        write_synthetic_zarr(
            tmp,
            (n, n),
            (tile, tile),
            seed=SEED,
            kind="sparse",
            corner_fraction=CORNER,
            outside=outside,
        )
        os.replace(tmp, path)
        print(f"  [data] wrote {path} in {time.perf_counter() - t0:.1f} s", flush=True)
    return path


def scratch(name: str) -> str:
    os.makedirs(OUT, exist_ok=True)
    p = os.path.join(OUT, name)
    C.rmtree(p)  # also removes blockbuster's staging next to it
    return p


def warm_up() -> float:
    from blockbuster.api import tile_process
    from blockbuster.segmenters import watershed
    from blockbuster.synthetic import sparse_nuclei

    t0 = time.perf_counter()
    img, _ = sparse_nuclei((512, 512), corner_fraction=0.5, seed=1)
    for skip in (False, True):
        out = scratch("warm.zarr")
        tile_process(
            img,
            watershed(threshold=EMPTY, min_distance=6),
            tile_shape=(TILE, TILE),
            skip_empty=skip,
            empty_threshold=EMPTY,
            write_to=out,
        )
        C.rmtree(out)
    return time.perf_counter() - t0


CASES = {  # name: (image variant, segmenter, tile, repeats: None = --repeats)
    "cellpose": ("noise", "cellpose", 128, 1),
    "zero": ("zero", EMPTY, TILE, None),
    "noise": ("noise", EMPTY, TILE, None),
    "noise-otsu": ("noise", None, TILE, 1),  # its full run segments noise: minutes, so once
}
TARGET_CASE = "cellpose"


def make_segmenter(kind):
    """``"cellpose"``: cellpose_fn over a random Cellpose 3 network (saved once under
    bench/_data; nothing is downloaded); a number or None: watershed with that threshold."""
    if kind != "cellpose":
        from blockbuster.segmenters import watershed

        return watershed(threshold=kind, min_distance=6)
    from blockbuster.plugins.cellpose import cellpose_fn

    path = os.path.join(C.DATA, "random_cp3")
    if not os.path.exists(path):
        import torch
        from cellpose.resnet_torch import CPnet

        torch.manual_seed(0)
        CPnet([2, 32, 64, 128, 256], 3, sz=3, diam_mean=30.0).save_model(path)
    return cellpose_fn(
        pretrained_model=path, diameter=30, bsize=128, flow_threshold=0, cellprob_threshold=-3
    )


def fixed_cost(repeats: int) -> float:
    """Wall time of a warm call with nothing to do: 512 x 512 zeros, 4 tiles, all skipped."""
    import zarr

    from blockbuster.api import tile_process
    from blockbuster.segmenters import watershed

    path = os.path.join(C.DATA, f"zeros-512-c{TILE}.zarr")
    if not os.path.exists(path):
        zarr.create_array(
            store=path, shape=(512, 512), chunks=(TILE, TILE), dtype=np.uint16, fill_value=0
        )
    walls = []
    for _ in range(repeats):
        out = scratch("fixed.zarr")
        t0 = time.perf_counter()
        tile_process(
            path,
            watershed(threshold=EMPTY, min_distance=6),
            tile_shape=(TILE, TILE),
            skip_empty=True,
            empty_threshold=EMPTY,
            write_to=out,
        )
        walls.append(time.perf_counter() - t0)
        C.rmtree(out)
    return C.median(walls)


def nonempty_tiles(path: str, tile: int) -> set[int]:
    """Tile numbers (C order, as blockbuster's grid) whose core has a pixel > EMPTY."""
    import zarr

    from blockbuster.core import TileGrid

    z = zarr.open_array(path, mode="r")
    grid = TileGrid(z.shape, (tile, tile))
    return {t for t in range(grid.n_tiles) if z[grid.core_slices(t)].max() > EMPTY}


def measure(path: str, kind, tile: int, repeats: int, nonempty: set[int]) -> dict:
    from blockbuster.api import tile_process

    seg = make_segmenter(kind)
    res = {w: {"wall": [], "stages": [], "load": [], "summary": None} for w in ("full", "skip")}
    labels = {}
    for r in range(repeats):
        for which in ("full", "skip") if r % 2 == 0 else ("skip", "full"):
            out = scratch(f"{which}.zarr")
            meter = C.OtherLoad().start()
            t0 = time.perf_counter()
            _, summ = tile_process(
                path,
                seg,
                tile_shape=(tile, tile),
                overlap=0,
                skip_empty=(which == "skip"),
                empty_threshold=EMPTY,
                write_to=out,
                return_summary=True,
            )
            wall = time.perf_counter() - t0
            load = meter.stop()
            assert not summ.get("cached"), "a cached result was returned"
            d = res[which]
            d["wall"].append(wall)
            d["stages"].append(summ["timings"])
            d["load"].append(load)
            d["summary"] = {
                k: summ[k]
                for k in (
                    "n_tiles",
                    "n_skipped",
                    "labels_before_merge",
                    "labels_after_merge",
                    "skipped_fraction",
                )
            }
            # fn's own seconds (worker side), summed over the empty / non-empty tiles
            fs = {"empty": [], "nonempty": []}
            for rec in summ["tiles"]:
                fs["nonempty" if rec["tile"] in nonempty else "empty"].append(rec["fn_seconds"])
            d.setdefault("fn_seconds", []).append(
                {
                    k: {
                        "sum": float(sum(v)),
                        "n": len(v),
                        "median_ms": 1000 * C.median(v) if v else 0.0,
                    }
                    for k, v in fs.items()
                }
            )
            print(
                f"    {which}: {wall:.2f} s ("
                + ", ".join(f"{k} {summ['timings'].get(k, 0):.2f}" for k in STAGES)
                + f"), skipped {summ['n_skipped']}/{summ['n_tiles']}, "
                f"other load {load:.2f} cores",
                flush=True,
            )
            if r == 0:
                import zarr

                labels[which] = zarr.open_array(out, mode="r")[...]
            C.rmtree(out)
    for d in res.values():
        d["median"] = C.median(d["wall"])
        d["stage_median"] = {
            k: C.median([s.get(k, 0.0) for s in d["stages"]]) for k in STAGES + ("total",)
        }
        d["load_median"] = C.median(d["load"])
        d["fn_median"] = {
            k: {q: C.median([f[k][q] for f in d["fn_seconds"]]) for q in ("sum", "median_ms")}
            for k in ("empty", "nonempty")
        }
    res["labels"] = labels
    return res


def check(path: str, labels: dict, tile: int) -> dict:
    """Partition equality of the two runs on the non-empty tiles; background elsewhere."""
    import zarr

    from blockbuster.core import TileGrid, same_partition

    img = zarr.open_array(path, mode="r")[...]
    grid = TileGrid(img.shape, (tile, tile))
    nonempty = np.zeros(img.shape, bool)
    k = 0
    for t in range(grid.n_tiles):
        sl = grid.core_slices(t)
        if img[sl].max() > EMPTY:
            nonempty[sl] = True
            k += 1
    a, b = labels["full"], labels["skip"]
    same = same_partition(np.where(nonempty, a, 0), np.where(nonempty, b, 0))
    return {
        "n_tiles": grid.n_tiles,
        "nonempty_tiles": k,
        "fraction": k / grid.n_tiles,
        "same_partition_nonempty": bool(same),
        "empty_region_background_full": bool((a[~nonempty] == 0).all()),
        "empty_region_background_skip": bool((b[~nonempty] == 0).all()),
        "objects_full": int(np.unique(a[a > 0]).size),
        "objects_skip": int(np.unique(b[b > 0]).size),
    }


def zarr_shape(path: str) -> tuple[int, ...]:
    import zarr

    return zarr.open_array(path, mode="r").shape


def main() -> int:
    args = C.parse_args(
        __doc__, extra=[("--otsu", {"action": "store_true", "help": "also the noise-otsu case"})]
    )
    n = 1024 if args.quick else 4096
    C.header(f"skip_empty vs full, {n} x {n} sparse nuclei, tiles {TILE} x {TILE}", args)
    cases = {k: v for k, v in CASES.items() if args.otsu or k != "noise-otsu"}
    n_cp = 512 if args.quick else 2048
    paths = {
        (v, t): image_path(n_cp if seg == "cellpose" else n, v, t)
        for v, seg, t, _ in cases.values()
    }
    client, cluster = C.make_client()
    results = {}
    try:
        print(f"warm-up: {warm_up():.1f} s", flush=True)
        fixed = fixed_cost(args.repeats)
        print(
            f"fixed cost of a warm call with nothing to do (512 x 512 zeros, 4 tiles "
            f"skipped): {fixed:.2f} s",
            flush=True,
        )
        nonempty = {k: nonempty_tiles(p, k[1]) for k, p in paths.items()}
        for case, (variant, kind, tile, reps) in cases.items():
            path = paths[variant, tile]
            reps = reps or args.repeats
            print(
                f"  case {case}: image {path}, segmenter {kind}, tiles {tile}, {reps} repeat(s)",
                flush=True,
            )
            res = measure(path, kind, tile, reps, nonempty[variant, tile])
            res["repeats"] = reps
            res["tile"] = tile
            res["n"] = zarr_shape(path)[0]
            res["check"] = check(path, res.pop("labels"), tile)
            c = res["check"]
            print(
                f"  non-empty tiles: {c['nonempty_tiles']} of {c['n_tiles']} "
                f"({c['fraction']:.1%}); same partition on them: "
                f"{c['same_partition_nonempty']}; objects full/skip "
                f"{c['objects_full']}/{c['objects_skip']}",
                flush=True,
            )
            results[case] = res
    finally:
        client.close()
        cluster.close()
        shutil.rmtree(OUT, ignore_errors=True)

    ok_all = True
    for case, res in results.items():
        ratio = res["skip"]["median"] / res["full"]["median"]
        c = res["check"]
        ok = ratio < TARGET
        if case == TARGET_CASE:
            ok_all = ok
        rows = [
            [
                w,
                C.fmt_s(res[w]["median"]),
                *(C.fmt_s(res[w]["stage_median"][k]) for k in STAGES + ("total",)),
                C.fmt_s(res[w]["median"] - res[w]["stage_median"]["total"]),
                f"{res[w]['summary']['n_skipped']}/{res[w]['summary']['n_tiles']}",
                f"{res[w]['load_median']:.2f}",
            ]
            for w in ("full", "skip")
        ]
        C.table(
            [
                "run",
                "wall s",
                "segment",
                "seams",
                "lut",
                "relabel",
                "stages total",
                "outside stages",
                "tiles skipped",
                "other load, cores",
            ],
            rows,
            title=f"case {case!r}: {res['n']} x {res['n']}, tiles {res['tile']}, "
            f"{c['nonempty_tiles']}/{c['n_tiles']} "
            f"tiles non-empty ({c['fraction']:.1%}), median of {res['repeats']}",
        )
        print(
            f"skip/full: {ratio:.2f}x"
            + (
                f" (target < {TARGET}x: {C.verdict(ok)})"
                if case == TARGET_CASE
                else " (context, no target)"
            )
        )
        fe, fn_ = res["full"]["fn_median"]["empty"], res["full"]["fn_median"]["nonempty"]
        se = res["skip"]["fn_median"]["nonempty"]
        print(
            f"fn's own time (worker side, sum over tiles; median per tile): full run: "
            f"{fe['sum']:.2f} s on the {c['n_tiles'] - c['nonempty_tiles']} empty tiles "
            f"({fe['median_ms']:.1f} ms each), {fn_['sum']:.2f} s on the "
            f"{c['nonempty_tiles']} non-empty ones ({fn_['median_ms']:.0f} ms each); "
            f"skip run: {se['sum']:.2f} s on the non-empty ones"
        )
        print(
            f"labels: same partition on the non-empty tiles: "
            f"{c['same_partition_nonempty']}; empty tiles all background: "
            f"full {c['empty_region_background_full']}, "
            f"skip {c['empty_region_background_skip']}; objects full {c['objects_full']}, "
            f"skip {c['objects_skip']}"
        )
    print(f"\nfixed cost of a warm call with nothing to do: {fixed:.2f} s")
    print(f"\ntarget (skip/full < {TARGET}x in case {TARGET_CASE}): {C.verdict(ok_all)}")
    with open(
        os.path.join(C.DATA, f"results-skip-empty{'-quick' if args.quick else ''}.json"), "w"
    ) as f:
        json.dump(
            {
                "n": n,
                "corner_fraction": CORNER,
                "cases": {k: list(v) for k, v in cases.items()},
                "fixed_cost": fixed,
                "results": results,
            },
            f,
            indent=1,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Seam accuracy and cost of the overlap merge vs the touch merge.

A dense synthetic nuclei image, ``write_synthetic_zarr(kind="nuclei", radius=(8, 14))``
(nucleus diameter ~16-28 px; touching clusters), 2048 x 2048 uint16 zarr with chunks
256 x 256 (``--quick``: 1024 x 1024), segmenter ``watershed(threshold=0.3*65535,
min_distance=6)``, tiles 256 x 256. The reference is the whole-image segmentation
``seg(img)`` (same segmenter, one call on the whole image).

For overlap = 12, 24 and 48 px (about 0.5, 1 and 2 diameters) the same call is made with
``merge="overlap"`` (IoU >= 0.5 in the shared halo) and ``merge="touch"``; plus
``merge="touch", overlap=0`` as a no-halo baseline. Reported:

- instance F1 (IoU >= 0.5) vs the reference over all objects, and over the *seam
  objects*: the reference objects whose pixels lie in more than one tile core, compared
  with the tiled objects overlapping them (everything else set to background in both);
- per-stage seconds (median of repeats, overlap and touch alternating): the merge stage
  (seams + lut + relabel) of overlap vs touch at the same overlap (target: overlap under
  1.2x touch), and the segment stage of both (the overlap merge also stages each tile's
  halo bands during segmentation; the difference is that cost);
- the worker-side work behind the difference, measured in this process on one core
  (CPU seconds, so other load on a shared machine does not blur it): per merge mode and
  overlap, the staging part of segmentation (``segment_one`` with ``fn`` replaced by its
  precomputed labels: compaction, halo bands, the staging record) and
  the seam scan (``scan_tiles`` over all tiles), summed over the tiles (median of
  ``max(repeats, 5)``; the tile reads are done before, outside the timing).

    python bench/seams.py [--quick] [--repeats 3]
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

TARGET = 1.2
TILE = 256
SCALE = 65535
THR = 0.3 * SCALE
MIN_DISTANCE = 6
OVERLAPS = (12, 24, 48)
SEED = 0
OUT = os.path.join(C.DATA, "out-seams")  # our own scratch dir (not C.scratch's)
STAGES = ("segment", "seams", "lut", "relabel")


def segmenter():
    from blockbuster.segmenters import watershed

    return watershed(threshold=THR, min_distance=MIN_DISTANCE)


def image_path(n: int) -> tuple[str, str]:
    from blockbuster.synthetic import write_synthetic_zarr

    os.makedirs(C.DATA, exist_ok=True)
    path = os.path.join(C.DATA, f"nuclei-{n}-c{TILE}.zarr")
    truth = os.path.join(C.DATA, f"nuclei-{n}-c{TILE}-truth.zarr")
    if not (os.path.exists(path) and os.path.exists(truth)):
        t0 = time.perf_counter()
        for p in (path, truth, path + ".tmp", truth + ".tmp"):
            shutil.rmtree(p, ignore_errors=True)
        write_synthetic_zarr(
            path + ".tmp",
            (n, n),
            (TILE, TILE),
            seed=SEED,
            kind="nuclei",
            radius=(8, 14),
            labels_path=truth + ".tmp",
        )
        os.replace(truth + ".tmp", truth)
        os.replace(path + ".tmp", path)
        print(f"  [data] wrote {path} in {time.perf_counter() - t0:.1f} s", flush=True)
    return path, truth


def scratch(name: str) -> str:
    os.makedirs(OUT, exist_ok=True)
    p = os.path.join(OUT, name)
    C.rmtree(p)  # also removes blockbuster's staging next to it
    return p


def warm_up() -> float:
    from blockbuster.api import tile_process
    from blockbuster.synthetic import synthetic_nuclei

    t0 = time.perf_counter()
    img, _ = synthetic_nuclei((512, 512), seed=1)
    for merge, ov in (("touch", 0), ("overlap", 24)):
        out = scratch("warm.zarr")
        tile_process(
            img, segmenter(), tile_shape=(TILE, TILE), overlap=ov, merge=merge, write_to=out
        )
        C.rmtree(out)
    return time.perf_counter() - t0


def seam_objects(ref: np.ndarray) -> np.ndarray:
    """Ids of the reference objects whose pixels lie in more than one tile core."""
    from scipy import ndimage as ndi

    from blockbuster.core import TileGrid

    grid = TileGrid(ref.shape, (TILE, TILE))
    tid = np.zeros(ref.shape, np.int32)
    for t in range(grid.n_tiles):
        tid[grid.core_slices(t)] = t
    ids = np.unique(ref[ref > 0])
    lo = np.asarray(ndi.minimum(tid, ref, ids))
    hi = np.asarray(ndi.maximum(tid, ref, ids))
    return ids[lo != hi]


def accuracy(tiled: np.ndarray, ref: np.ndarray, seam_ids: np.ndarray) -> dict:
    from blockbuster.core import instance_f1

    allf = instance_f1(tiled, ref)
    ref_s = np.where(np.isin(ref, seam_ids), ref, 0)
    touching = np.unique(tiled[ref_s > 0])
    touching = touching[touching > 0]
    tiled_s = np.where(np.isin(tiled, touching), tiled, 0)
    seam = instance_f1(tiled_s, ref_s)
    keep = ("f1", "tp", "fp", "fn", "n_pred", "n_true", "mean_iou")
    return {"all": {k: allf[k] for k in keep}, "seam": {k: seam[k] for k in keep}}


class _Given:
    """A stand-in ``fn`` returning precomputed labels (so only the staging work is timed)."""

    def __init__(self, labels):
        self.labels = labels

    def __call__(self, tile):
        return self.labels


def worker_work(path: str, ov: int, repeats: int) -> dict:
    """CPU seconds, in this process, of the per-tile staging and of the seam scan."""
    import dataclasses
    import tempfile

    import zarr

    from blockbuster.core import make_plan
    from blockbuster.io import Staging, full_slices, open_image
    from blockbuster.worker import scan_tiles, segment_one

    src = open_image(path)
    z = zarr.open_array(path, mode="r")
    seg = segmenter()
    labels = None
    out = {}
    for merge in ("touch", "overlap"):
        plan = make_plan(
            src, fn_id="bench-seams", tile_shape=(TILE, TILE), overlap=ov, merge=merge
        )
        g = plan.grid
        if labels is None:
            datas = [z[full_slices(g.ext_slices(t), None)] for t in range(g.n_tiles)]
            labels = [seg(d) for d in datas]
        st_t, sc_t = [], []
        for _ in range(max(repeats, 5)):
            os.makedirs(OUT, exist_ok=True)
            root = tempfile.mkdtemp(prefix="bench-seams-", dir=OUT)
            plan = dataclasses.replace(plan, staging_root=os.path.join(root, "staging"))
            staging = Staging(plan.staging_root)
            staging.prepare({"run_key": plan.run_key})
            c0 = time.process_time()
            with staging:
                recs = [
                    segment_one(plan, _Given(labels[t]), t, datas[t], staging)
                    for t in range(g.n_tiles)
                ]
            c1 = time.process_time()
            counts = np.array([r["n_labels"] for r in recs], dtype=np.int64)
            offsets = np.zeros_like(counts)
            np.cumsum(counts[:-1], out=offsets[1:])
            c2 = time.process_time()
            scan_tiles(plan, [t for t in range(g.n_tiles) if counts[t]], counts, offsets)
            c3 = time.process_time()
            st_t.append(c1 - c0)
            sc_t.append(c3 - c2)
            shutil.rmtree(root, ignore_errors=True)
        out[merge] = {"staging": C.median(st_t), "scan": C.median(sc_t)}
    out["n_tiles"] = len(labels)
    return out


def main() -> int:
    args = C.parse_args(__doc__)
    n = 1024 if args.quick else 2048
    C.header(f"seams: overlap vs touch merge, {n} x {n} dense nuclei, tiles {TILE} x {TILE}", args)
    path, truth_path = image_path(n)

    import zarr

    from blockbuster.api import tile_process
    from blockbuster.core import instance_f1

    img = zarr.open_array(path, mode="r")[...]
    truth = zarr.open_array(truth_path, mode="r")[...]
    t0 = time.perf_counter()
    ref = segmenter()(img)
    t_ref = time.perf_counter() - t0
    seam_ids = seam_objects(ref)
    ref_vs_truth = instance_f1(ref, truth)
    n_ref = int(np.unique(ref[ref > 0]).size)
    print(
        f"data: {int(truth.max())} true nuclei; whole-image seg: {n_ref} objects in "
        f"{t_ref:.1f} s (one process), F1 vs truth {ref_vs_truth['f1']:.3f}; "
        f"seam objects: {seam_ids.size} ({seam_ids.size / n_ref:.1%})",
        flush=True,
    )

    configs = [("touch", 0)] + [(m, ov) for ov in OVERLAPS for m in ("touch", "overlap")]
    res = {
        f"{m}-{ov}": {"merge": m, "overlap": ov, "wall": [], "stages": [], "load": []}
        for m, ov in configs
    }
    client, cluster = C.make_client()
    try:
        print(f"warm-up: {warm_up():.1f} s", flush=True)
        for r in range(args.repeats):
            for ov in (0,) + OVERLAPS:
                merges = (
                    ("touch",)
                    if ov == 0
                    else (("touch", "overlap") if r % 2 == 0 else ("overlap", "touch"))
                )
                for m in merges:
                    d = res[f"{m}-{ov}"]
                    out = scratch(f"{m}-{ov}.zarr")
                    meter = C.OtherLoad().start()
                    t0 = time.perf_counter()
                    _, summ = tile_process(
                        path,
                        segmenter(),
                        tile_shape=(TILE, TILE),
                        overlap=ov,
                        merge=m,
                        write_to=out,
                        return_summary=True,
                    )
                    wall = time.perf_counter() - t0
                    load = meter.stop()
                    assert not summ.get("cached"), "a cached result was returned"
                    d["wall"].append(wall)
                    d["stages"].append(summ["timings"])
                    d["load"].append(load)
                    d["summary"] = {
                        k: summ[k]
                        for k in (
                            "labels_before_merge",
                            "labels_after_merge",
                            "seam_pairs_merged",
                            "seam_pairs_unmerged",
                            "objects_spanning_halo",
                        )
                    }
                    tiled = zarr.open_array(out, mode="r")[...]
                    acc = accuracy(tiled, ref, seam_ids)
                    if "acc" in d and acc != d["acc"]:
                        print(f"    WARNING: {m}-{ov}: labels differ between repeats", flush=True)
                    d["acc"] = acc
                    tm = summ["timings"]
                    print(
                        f"  r{r} {m:7s} overlap {ov:2d}: {wall:.2f} s ("
                        + ", ".join(f"{k} {tm.get(k, 0):.2f}" for k in STAGES)
                        + f"), F1 all {acc['all']['f1']:.3f}, seam {acc['seam']['f1']:.3f}, "
                        f"other load {load:.2f} cores",
                        flush=True,
                    )
                    C.rmtree(out)
    finally:
        client.close()
        cluster.close()
    try:
        work = {}
        for ov in OVERLAPS:
            work[ov] = worker_work(path, ov, args.repeats)
            w = work[ov]
            print(
                f"  worker-side CPU, overlap {ov}: staging touch {w['touch']['staging']:.2f} s"
                f", overlap {w['overlap']['staging']:.2f} s; seam scan touch "
                f"{w['touch']['scan']:.2f} s, overlap {w['overlap']['scan']:.2f} s",
                flush=True,
            )
    finally:
        shutil.rmtree(OUT, ignore_errors=True)

    for d in res.values():
        st = {k: C.median([s.get(k, 0.0) for s in d["stages"]]) for k in STAGES + ("total",)}
        st["merge"] = C.median(
            [sum(s.get(k, 0.0) for k in ("seams", "lut", "relabel")) for s in d["stages"]]
        )
        d["stage_median"] = st
        d["median"] = C.median(d["wall"])
        d["load_median"] = C.median(d["load"])

    arows = []
    for m, ov in configs:
        d = res[f"{m}-{ov}"]
        a, s = d["acc"]["all"], d["acc"]["seam"]
        arows.append(
            [
                ov,
                f"{ov / 24:.1f}" if ov else "0",
                m,
                f"{a['f1']:.3f}",
                f"{a['tp']}/{a['fp']}/{a['fn']}",
                f"{s['f1']:.3f}",
                f"{s['tp']}/{s['fp']}/{s['fn']}",
                f"{s['mean_iou']:.3f}",
                d["summary"]["seam_pairs_merged"],
                d["summary"]["seam_pairs_unmerged"],
                d["summary"]["objects_spanning_halo"],
            ]
        )
    C.table(
        [
            "overlap px",
            "~diameters",
            "merge",
            "F1 all",
            "tp/fp/fn all",
            "F1 seam objects",
            "tp/fp/fn seam",
            "mean IoU seam",
            "pairs merged",
            "pairs left apart",
            "spanning halo",
        ],
        arows,
        title=f"accuracy vs whole-image seg ({n_ref} objects, {seam_ids.size} on seams)",
    )

    trows, ok_all = [], True
    for ov in OVERLAPS:
        o, t = res[f"overlap-{ov}"], res[f"touch-{ov}"]
        so, stt = o["stage_median"], t["stage_median"]
        ratio = so["merge"] / stt["merge"]
        ok = ratio < TARGET
        ok_all &= ok
        seg_cost = so["segment"] - stt["segment"]
        trows.append(
            [
                ov,
                C.fmt_s(stt["merge"]),
                C.fmt_s(so["merge"]),
                f"{ratio:.2f}x",
                C.verdict(ok),
                C.fmt_s(stt["segment"]),
                C.fmt_s(so["segment"]),
                f"{seg_cost:+.2f} ({seg_cost / stt['segment']:+.0%})",
                C.fmt_s(t["median"]),
                C.fmt_s(o["median"]),
                f"{t['load_median']:.2f}/{o['load_median']:.2f}",
            ]
        )
    C.table(
        [
            "overlap px",
            "merge stage touch s",
            "merge stage overlap s",
            "overlap/touch",
            f"target < {TARGET}x",
            "segment touch s",
            "segment overlap s",
            "halo-band cost s",
            "wall touch s",
            "wall overlap s",
            "other load t/o, cores",
        ],
        trows,
        title=f"merge-stage cost (seams + lut + relabel), median of {args.repeats}",
    )

    srows = []
    for m, ov in configs:
        d = res[f"{m}-{ov}"]
        st = d["stage_median"]
        srows.append(
            [
                ov,
                m,
                *(C.fmt_s(st[k]) for k in STAGES),
                C.fmt_s(st["merge"]),
                C.fmt_s(st["total"]),
                C.fmt_s(d["median"]),
            ]
        )
    C.table(
        [
            "overlap px",
            "merge",
            "segment",
            "seams",
            "lut",
            "relabel",
            "merge stage",
            "stages total",
            "wall",
        ],
        srows,
        title="per-stage seconds (median)",
    )
    wrows = []
    for ov in OVERLAPS:
        w = work[ov]
        nt = w["n_tiles"]
        ds = w["overlap"]["staging"] - w["touch"]["staging"]
        wrows.append(
            [
                ov,
                f"{w['touch']['staging']:.3f}",
                f"{w['overlap']['staging']:.3f}",
                f"{ds:+.3f} ({1000 * ds / nt:+.1f} ms/tile)",
                f"{w['touch']['scan']:.3f}",
                f"{w['overlap']['scan']:.3f}",
                f"{w['overlap']['scan'] / max(w['touch']['scan'], 1e-9):.1f}x",
            ]
        )
    C.table(
        [
            "overlap px",
            "staging touch",
            "staging overlap",
            "halo-band cost",
            "seam scan touch",
            "seam scan overlap",
            "scan overlap/touch",
        ],
        wrows,
        title=f"worker-side CPU seconds summed over the {work[OVERLAPS[0]]['n_tiles']} "
        f"tiles (one process, one core; median of {max(args.repeats, 5)})",
    )
    print(
        f"\nwhole-image seg vs synthetic truth: F1 {ref_vs_truth['f1']:.3f} "
        f"({t_ref:.1f} s, one process)"
    )
    print(
        f"target (overlap merge stage < {TARGET}x touch's at every overlap): {C.verdict(ok_all)}"
    )
    with open(
        os.path.join(C.DATA, f"results-seams{'-quick' if args.quick else ''}.json"), "w"
    ) as f:
        json.dump(
            {
                "n": n,
                "n_ref": n_ref,
                "n_seam": int(seam_ids.size),
                "ref_vs_truth": ref_vs_truth,
                "t_ref": t_ref,
                "results": res,
                "worker_cpu": work,
            },
            f,
            indent=1,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

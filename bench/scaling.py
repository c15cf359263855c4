"""How the merge's cost per voxel grows with the number of tiles: 64 vs 4096 tiles.

Two views, both warm on the benchmark cluster, each measurement repeated (median):

- same image (the 8192 x 8192 per-tile labels of bench/merge.py): 64 tiles of 1024 x 1024
  vs 4096 tiles of 128 x 128 — more, smaller tiles for the same voxels;
- same tile (256 x 256): a 2048 x 2048 image (64 tiles) vs a 16384 x 16384 image
  (4096 tiles) — a bigger image cut into more tiles of the same size.

``--large`` (issue 17): the same 16384 x 16384 image, 64 tiles of 2048 x 2048 vs 16,384
tiles of 128 x 128 (the floor in the same run; dask_image not run: at 4096 chunks it
already ran past its budget). Making its data takes a few minutes the first time.

Ours: ``merge_tile_labels(path, write_to=out)``. For context, the I/O floor of
bench/merge.py (``da.from_zarr(path).to_zarr(out)``) in the same run. Reference: ``dask_image.ndmeasure.label``
of the thresholded binary image (``da.from_zarr(per_tile_labels) > 0``: the same data, the
same chunks), written with ``.to_zarr`` (it labels globally too, so it does the same job
from the binary image; it runs in a child process on the same cluster, see
``run_dask_image``, and is stopped after a time budget: its graph grows with the square of
the number of chunks). Target: ours' time per voxel at 4096 tiles within 1.5x of that at
64 tiles.

    python bench/scaling.py [--quick | --large] [--repeats 3]
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

TARGET = 1.5
BUDGET = 120.0  # seconds one dask_image run may take (full)
BUDGET_QUICK = 5.0


def run_dask_image(client, path: str, out: str, budget: float) -> float | None:
    """dask_image label of the binary image, written to zarr, on the same cluster; None
    when it ran past ``budget`` seconds.

    It runs in a child process connected to the same scheduler, because dask_image
    builds its graph in the client (which takes minutes at thousands of chunks and can
    not be interrupted in-process); the child times itself from after it connected, so
    the time covers graph construction and compute, not the child's start.
    """
    import subprocess

    addr = client.scheduler.address
    cmd = [sys.executable, os.path.abspath(__file__), "--dask-image-child", addr, path, out]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=budget + 30)
    except subprocess.TimeoutExpired:
        time.sleep(3.0)  # the scheduler drops the dead client's tasks
        return None
    for ln in res.stdout.splitlines():
        if ln.startswith("DASK_IMAGE_SECONDS "):
            t = float(ln.split()[1])
            return t if t <= budget else None
    if "DASK_IMAGE_TIMEOUT" in res.stdout:
        return None
    raise RuntimeError(f"dask_image child failed:\n{res.stdout}\n{res.stderr[-3000:]}")


def dask_image_child(addr: str, path: str, out: str, budget: float) -> None:
    import dask.array as da
    import dask_image.ndmeasure as ndm
    from distributed import Client, wait

    with Client(addr) as client:
        client.run(lambda: None)
        t0 = time.perf_counter()
        binary = da.from_zarr(path) > 0
        lab, _ = ndm.label(binary)
        fut = client.compute(lab.to_zarr(out, compute=False))
        try:
            wait(fut, timeout=max(1.0, budget - (time.perf_counter() - t0)))
            fut.result()
        except TimeoutError:
            print("DASK_IMAGE_TIMEOUT", flush=True)
            client.cancel(fut, force=True)
            return
        print(f"DASK_IMAGE_SECONDS {time.perf_counter() - t0:.4f}", flush=True)


def measure(client, path: str, repeats: int, budget: float, with_ref: bool = True):
    import dask.array as da

    from blockbuster.api import merge_tile_labels

    ours, ref, floor, stages, labels, load = [], [], [], [], None, []
    ref_stopped = False
    for r in range(repeats):
        order = ("floor", "ours", "dask_image") if r % 2 == 0 else ("dask_image", "ours", "floor")
        for which in order:
            if which == "dask_image" and (ref_stopped or not with_ref):
                continue
            out = C.fresh(f"scaling-{which}.zarr")
            meter = C.OtherLoad().start()
            t0 = time.perf_counter()
            if which == "floor":
                da.from_zarr(path).to_zarr(out)
                floor.append(time.perf_counter() - t0)
            elif which == "ours":
                _, summ = merge_tile_labels(path, write_to=out, return_summary=True)
                ours.append(time.perf_counter() - t0)
                stages.append(summ["timings"])
                labels = summ["labels_after_merge"]
            else:
                t = run_dask_image(client, path, out, budget)
                if t is None:
                    ref_stopped = True  # past the budget once: not repeated
                else:
                    ref.append(t)
                    if t > budget / 2:
                        ref_stopped = True  # slow: one run is enough for a reference
            if which == "ours":
                load.append(meter.stop())
            C.discard(out)
            C.settle(client)  # the next measurement starts with nothing left over
    return {
        "ours": C.median(ours),
        "ref": C.median(ref) if ref else None,
        "floor": C.median(floor),
        "floor_all": floor,
        "ref_stopped": ref_stopped,
        "ref_run": with_ref,
        "budget": budget,
        "ours_all": ours,
        "ref_all": ref,
        "stages": {
            k: C.median([s.get(k, 0.0) for s in stages])
            for k in ("segment", "seams", "lut", "relabel", "total")
        },
        "labels": labels,
        "other_load": C.median(load),
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--dask-image-child":
        dask_image_child(
            *sys.argv[2:5],
            budget=BUDGET_QUICK if "quick" in os.environ.get("BENCH_MODE", "") else BUDGET,
        )
        return 0
    args = C.parse_args(
        __doc__,
        [("--large", {"action": "store_true", "help": "16384² image, 64 vs 16,384 tiles"})],
    )
    os.environ["BENCH_MODE"] = "quick" if args.quick else "full"
    if args.large:
        views = {"same image": [(16384, 2048), (16384, 128)]}
        budget = BUDGET
    elif args.quick:
        views = {"same image": [(512, 256), (512, 64)], "same tile": [(256, 64), (1024, 64)]}
        budget = BUDGET_QUICK
    else:
        budget = BUDGET
        views = {
            "same image": [(8192, 1024), (8192, 128)],
            "same tile": [(2048, 256), (16384, 256)],
        }
    C.header(
        "merge cost per voxel, 64 vs 4096 tiles (quick: 16 vs 256)"
        if args.quick
        else "merge cost per voxel, 64 vs 16,384 tiles of a 16384² image"
        if args.large
        else "merge cost per voxel, 64 vs 4096 tiles",
        args,
    )
    for cases in views.values():
        for n, t in cases:
            C.tile_labels_path(n, t)
    client, cluster = C.make_client()
    results = {}
    try:
        print(f"warm-up: {C.warm_up(client):.1f} s", flush=True)
        for view, cases in views.items():
            for n, t in cases:
                # --quick: the reference only where it finishes in seconds (4 tiles)
                with_ref = not args.large and (not args.quick or (n // t) ** 2 <= 4)
                res = measure(client, C.tile_labels_path(n, t), args.repeats, budget, with_ref)
                res.update(n=n, tile=t, n_tiles=(n // t) ** 2, voxels=n * n)
                results[f"{view}|{n}|{t}"] = res
                ref = (
                    f"{res['ref']:.2f} s"
                    if res["ref"] is not None
                    else f"stopped after {budget:.0f} s"
                    if with_ref
                    else "not run"
                )
                print(
                    f"  {view}: {n}x{n}, tile {t}: ours {res['ours']:.2f} s, floor "
                    f"{res['floor']:.2f} s, dask_image {ref}",
                    flush=True,
                )
    finally:
        client.close()
        cluster.close()
        C.drop_outputs()

    ok_all = True
    for view, cases in views.items():
        rows = []
        base = fbase = None
        for n, t in cases:
            r = results[f"{view}|{n}|{t}"]
            ns_ours = 1e9 * r["ours"] / r["voxels"]
            ns_ref = 1e9 * r["ref"] / r["voxels"] if r["ref"] is not None else None
            base = base or (ns_ours, ns_ref)
            s = r["stages"]
            if not r["ref_run"]:
                ref_cells = ["not run (--quick / --large)", "-", "-", "-"]
            elif ns_ref is None:
                ref_cells = [
                    f"> {r['budget']:.0f} (stopped)",
                    f"> {1e9 * r['budget'] / r['voxels']:.1f}",
                    "-",
                    "-",
                ]
            else:
                ref_cells = [
                    C.fmt_s(r["ref"]),
                    f"{ns_ref:.2f}",
                    f"{ns_ref / base[1]:.2f}x" if base[1] else "-",
                    f"{r['ours'] / r['ref']:.2f}x",
                ]
            ns_floor = 1e9 * r["floor"] / r["voxels"]
            fbase = fbase or ns_floor
            rows.append(
                [
                    r["n_tiles"],
                    f"{n}x{n}",
                    f"{t}x{t}",
                    C.fmt_s(r["ours"]),
                    f"{ns_ours:.2f}",
                    f"{ns_ours / base[0]:.2f}x",
                    C.fmt_s(r["floor"]),
                    f"{ns_floor:.2f}",
                    f"{ns_floor / fbase:.2f}x",
                    *ref_cells,
                    " / ".join(C.fmt_s(s[k]) for k in ("segment", "seams", "relabel"))
                    + f" / {C.fmt_s(r['ours'] - s['total'])}",
                    f"{r['other_load']:.2f}",
                ]
            )
        growth = rows[-1][5]
        ok = float(growth[:-1]) <= TARGET
        ok_all &= ok
        C.table(
            [
                "tiles",
                "image",
                "tile",
                "ours s",
                "ours ns/voxel",
                "ours per-voxel vs first",
                "floor s (dask copy)",
                "floor ns/voxel",
                "floor per-voxel vs first",
                "dask_image s",
                "dask_image ns/voxel",
                "dask_image per-voxel vs first",
                "ours/dask_image",
                "ours segment / seams / relabel / outside stages s",
                "other load during ours, cores",
            ],
            rows,
            title=f"{view}: median of {args.repeats} — per-voxel growth {growth} "
            f"(target <= {TARGET}x: {C.verdict(ok)})",
        )
    print(
        f"\ntarget (ours per voxel at the most tiles within {TARGET}x of the fewest, both "
        f"views): {C.verdict(ok_all)}"
    )
    with open(
        os.path.join(
            C.DATA,
            f"results-scaling{'-quick' if args.quick else '-large' if args.large else ''}.json",
        ),
        "w",
    ) as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

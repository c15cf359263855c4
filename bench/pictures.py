"""What the pictures cost, and how long a fresh process's small job takes with `blockbuster up`.

1. Pictures' cost as a fraction of the run: ``tile_process`` (threshold + label) of the
   8192² image at 64 tiles (1024²) and 4096 tiles (128²), and ``merge_tile_labels`` of
   its 4096 per-tile labels (merge units, a sharded output); the pictures step's own
   seconds (``summary["timings"]["pictures"]``: sampling on the cluster, drawing,
   encoding, writing the PNGs; it runs between the relabel stage and the end of the flow)
   over the run's wall time (since the samples come from the stages, the step draws and
   encodes in a background thread: "waited for" is the part on the run's critical
   path, ``summary["timings"]["pictures_wait"]``; "its CPU" the thread's CPU seconds,
   ``pictures_cpu``, which a loaded machine does not inflate); and, side by side, the same run with
   ``BLOCKBUSTER_PICTURES=false`` (the whole difference, whatever stage it falls in).
2. A fresh ``python`` process running a 16-tile job (256², tiles of 64², no client, no
   ``PREFECT_API_URL``) on a ``PREFECT_HOME`` that already exists: without ``blockbuster
   up`` (each process starts Prefect's temporary server) and with it; split into imports,
   the call (cluster start, flow run) and the process exit.
3. With ``--forkserver-ab N``: the same fresh-process job with ``blockbuster up``
   running, its local cluster's workers forked from a forkserver
   (``BLOCKBUSTER_WORKER_FORKSERVER=true``, the default on Linux) and spawned as Dask
   does (``false``), alternating, N pairs.

Usage: ``python bench/pictures.py [--quick] [--repeats N] [--skip-cost] [--skip-fresh]
[--forkserver-ab N]``
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402

JOB = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import scipy.ndimage as ndi
from blockbuster import tile_process
t1 = time.perf_counter()

def label(tile):
    return ndi.label(tile > 0)[0]

img = np.zeros((256, 256), np.uint8)
img[20:120, 30:90] = 1
img[150:240, 10:250] = 1
_, s = tile_process(img, label, tile_shape=(64, 64), write_to=sys.argv[1], return_summary=True)
t2 = time.perf_counter()
print("RESULT " + json.dumps({"imports": t1 - t0, "call": t2 - t1, "flow": s["timings"]["total"],
      "pictures": s["timings"].get("pictures"), "n_tiles": s["n_tiles"]}), flush=True)
"""


def cost(args) -> list[list]:
    from blockbuster.api import merge_tile_labels, tile_process

    n = 2048 if args.quick else 8192
    rows = []
    client, cluster = C.make_client()
    try:
        C.warm_up(client)
        cases = [
            ("tile_process", 64, n // 8),
            ("tile_process", 4096, n // 64),
            ("merge_tile_labels", 4096, n // 64),
        ]
        # untimed: the first run of a process starts Prefect (its temporary server)
        warm = C.fresh("pictures-warm-up.zarr")
        tile_process(
            C.image_path(n, n // 8), C.threshold_label, tile_shape=(n // 8,) * 2, write_to=warm
        )
        C.discard(warm)
        for what, n_tiles, tile in cases:
            src = C.image_path(n, tile) if what == "tile_process" else C.tile_labels_path(n, tile)
            walls, pics, offs, waits, cpus = [], [], [], [], []
            for _ in range(args.repeats):
                for on in (True, False):  # side by side: the same run without pictures
                    os.environ["BLOCKBUSTER_PICTURES"] = "true" if on else "false"
                    out = C.fresh(f"pictures-{what}-{tile}.zarr")
                    t0 = time.perf_counter()
                    if what == "tile_process":
                        _, s_ = tile_process(
                            src,
                            C.threshold_label,
                            tile_shape=(tile, tile),
                            write_to=out,
                            return_summary=True,
                        )
                    else:
                        _, s_ = merge_tile_labels(src, write_to=out, return_summary=True)
                    (walls if on else offs).append(time.perf_counter() - t0)
                    if on:
                        s = s_
                        pics.append(s["timings"].get("pictures", float("nan")))
                        # the part the run waited for (the drawing runs in the background)
                        waits.append(s["timings"].get("pictures_wait", float("nan")))
                        # CPU seconds of the pictures' thread: what a quiet machine pays
                        cpus.append(s["timings"].get("pictures_cpu", float("nan")))
                    C.discard(out)
            os.environ.pop("BLOCKBUSTER_PICTURES", None)
            w, p, off = C.median(walls), C.median(pics), C.median(offs)
            wait, cpu = C.median(waits), C.median(cpus)
            crit = p if wait != wait else wait  # what the run waited for (all of it before)
            kb = s.get("pictures", {}).get("preview_bytes", 0) / 1024
            rows.append(
                [
                    what,
                    f"{n}²",
                    n_tiles,
                    f"{tile}²",
                    C.fmt_s(w),
                    C.fmt_s(off),
                    C.fmt_s(p),
                    "-" if wait != wait else C.fmt_s(wait),
                    "-" if cpu != cpu else C.fmt_s(cpu),
                    f"{100 * crit / w:.1f} %",
                    f"{100 * (w - off) / off:+.1f} %",
                    f"{kb:.0f} KB",
                    C.verdict(crit / w < 0.03),
                ]
            )
            print(rows[-1], flush=True)
    finally:
        client.close()
        cluster.close()
    return rows


def _job(env: dict, out: str) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-c", JOB, out], env=env, capture_output=True, text=True, timeout=600
    )
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(p.stdout[-2000:] + p.stderr[-2000:])
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    r = json.loads(line[len("RESULT ") :])
    r["wall"] = wall
    r["exit"] = wall - r["imports"] - r["call"]
    return r


def _cli(env: dict, *args: str) -> str:
    code = "import sys; from blockbuster.cli import main; sys.exit(main())"
    p = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=600
    )
    if p.returncode != 0:
        raise RuntimeError(p.stdout + p.stderr)
    return p.stdout


def fresh(args) -> list[list]:
    home = tempfile.mkdtemp(prefix="blockbuster-bench-home-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    outdir = tempfile.mkdtemp(prefix="blockbuster-bench-out-")
    k = iter(range(10_000))
    rows = []
    print("  first run on a new PREFECT_HOME (creates its database; not timed)", flush=True)
    _job(env, os.path.join(outdir, f"{next(k)}.zarr"))
    for mode in ("temporary server", "blockbuster up"):
        if mode == "blockbuster up":
            print("  " + _cli(env, "up").splitlines()[0], flush=True)
        try:
            got = [_job(env, os.path.join(outdir, f"{next(k)}.zarr")) for _ in range(args.repeats)]
        finally:
            if mode == "blockbuster up":
                print("  " + _cli(env, "down").strip(), flush=True)
        med = {key: C.median([g[key] for g in got]) for key in ("wall", "imports", "call", "flow")}
        med["exit"] = C.median([g["exit"] for g in got])
        rows.append(
            [
                mode,
                C.fmt_s(med["wall"]),
                C.fmt_s(med["imports"]),
                C.fmt_s(med["call"] - med["flow"]),
                C.fmt_s(med["flow"]),
                C.fmt_s(med["exit"]),
                C.verdict(med["wall"] <= 5.0) if mode == "blockbuster up" else "",
            ]
        )
        print(rows[-1], flush=True)
    return rows


def forkserver_ab(pairs: int) -> list[list]:
    home = tempfile.mkdtemp(prefix="blockbuster-bench-home-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    outdir = tempfile.mkdtemp(prefix="blockbuster-bench-out-")
    _job(env, os.path.join(outdir, "first.zarr"))  # creates the database; not timed
    print("  " + _cli(env, "up").splitlines()[0], flush=True)
    got: dict[str, list[dict]] = {"true": [], "false": []}
    try:
        for i in range(pairs):
            for v in got:
                r = _job(
                    dict(env, BLOCKBUSTER_WORKER_FORKSERVER=v),
                    os.path.join(outdir, f"{v}{i}.zarr"),
                )
                got[v].append(r)
                print(f"  forkserver={v}: {r['wall']:.2f} s", flush=True)
    finally:
        print("  " + _cli(env, "down").strip(), flush=True)
    rows = []
    for v, rs in got.items():
        walls = sorted(r["wall"] for r in rs)
        rows.append(
            [
                "forked from a forkserver" if v == "true" else "spawned",
                C.fmt_s(C.median(walls)),
                f"{walls[0]:.2f}-{walls[-1]:.2f}",
                C.fmt_s(C.median([r["call"] - r["flow"] for r in rs])),
                C.fmt_s(C.median([r["flow"] for r in rs])),
                C.fmt_s(C.median([r["exit"] for r in rs])),
            ]
        )
    return rows


def main() -> None:
    args = C.parse_args(
        __doc__,
        extra=[
            ("--skip-cost", {"action": "store_true", "help": "only the fresh-process part"}),
            ("--skip-fresh", {"action": "store_true", "help": "only the pictures' cost"}),
            (
                "--forkserver-ab",
                {"type": int, "default": 0, "help": "N fresh-process pairs, forked vs spawned"},
            ),
        ],
    )
    C.header("pictures and the local UI", args)
    if not args.skip_cost:
        load = C.OtherLoad().start()
        rows = cost(args)
        C.table(
            [
                "run",
                "image",
                "tiles",
                "tile",
                "run s",
                "run without pictures s",
                "pictures step s",
                "waited for s",
                "its CPU s",
                "waited / run",
                "run vs without",
                "preview",
                "< 3 %",
            ],
            rows,
            title=f"pictures' cost (other load {load.stop():.2f} cores)",
        )
    if not args.skip_fresh:
        load = C.OtherLoad().start()
        rows = fresh(args)
        C.table(
            [
                "fresh process, 16 tiles",
                "wall s",
                "imports s",
                "call outside the flow s",
                "flow s",
                "exit s",
                "<= 5 s",
            ],
            rows,
            title=f"a fresh process's 16-tile job (other load {load.stop():.2f} cores)",
        )

    if args.forkserver_ab:
        load = C.OtherLoad().start()
        rows = forkserver_ab(args.forkserver_ab)
        C.table(
            [
                "fresh process, 16 tiles, `up` running",
                "median wall s",
                "range s",
                "call outside the flow s",
                "flow s",
                "exit s",
            ],
            rows,
            title=f"workers forked vs spawned (other load {load.stop():.2f} cores)",
        )


if __name__ == "__main__":
    main()

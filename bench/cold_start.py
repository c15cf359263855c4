"""Cold start: from a fresh Python process to the first tile running.

Each run starts a FRESH ``python`` subprocess with no ``PREFECT_API_URL`` and a new, empty
``PREFECT_HOME`` (so Prefect really starts cold: new database, temporary API server), and
no Dask client (so ``tile_process`` starts its own LocalCluster). The child calls
``tile_process`` on a small zarr image (512 x 512 uint16, 16 tiles of 128 x 128) with a
function that writes a timestamp file the first time it runs on any tile.

Reported per run: time from just before the subprocess is spawned to the first tile
starting (target < 15 s), where the child spent that time (interpreter and imports;
inside ``tile_process``: when Prefect's temporary API answered and when the local cluster
was up — timed by wrapping two internals in the child, nothing changed — and the first
tile), and the total wall time of the process (spawn to
exit, cluster and Prefect server shutdown included). Also: how many temporary Prefect
servers the run started, and whether it printed any traceback.

    python bench/cold_start.py [--quick] [--repeats 3]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

TARGET = 15.0
THRESHOLD = C.THRESHOLD


def stamp_and_label(tile):
    """Threshold + label; the first call on any worker writes the time to a file."""
    import os
    import time

    path = os.environ.get("BENCH_FIRST_TILE_FILE")
    if path and not os.path.exists(path):
        t = time.time()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            os.write(fd, repr(t).encode())
            os.close(fd)
        except FileExistsError:
            pass
    from scipy import ndimage as ndi

    return ndi.label(tile > THRESHOLD)[0]


def _instrument(marks: dict) -> None:
    """Timestamps of the phases inside tile_process, by wrapping (not changing) two
    internals: Prefect's API warm-up and the background start of the local cluster."""
    import blockbuster.cluster._shared as cl
    import blockbuster.tasks as eph  # api takes warm_up from the package

    warm, start = eph.warm_up, cl._Shared._start

    def timed_warm(*args):
        marks["prefect_warm_start"] = time.time()
        try:
            return warm(*args)
        finally:
            marks["prefect_ready"] = time.time()

    def timed_start(self):
        marks["cluster_start"] = time.time()
        try:
            return start(self)
        finally:
            marks["cluster_ready"] = time.time()

    eph.warm_up = timed_warm
    cl._Shared._start = timed_start


def child(image: str, out: str, marks_path: str) -> None:
    marks = {"main": time.time()}
    from blockbuster.api import tile_process

    marks["imported"] = time.time()
    _instrument(marks)
    marks["call"] = time.time()
    tile_process(image, stamp_and_label, tile_shape=(128, 128), write_to=out)
    marks["returned"] = time.time()
    with open(marks_path, "w") as f:
        json.dump(marks, f)


def one_run(image: str, work: str, i: int) -> dict:
    home = tempfile.mkdtemp(prefix=f"prefect-home-cold{i}-", dir=work)
    stamp = os.path.join(work, f"first-tile-{i}.txt")
    marks = os.path.join(work, f"marks-{i}.json")
    out = os.path.join(work, f"out-{i}.zarr")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PREFECT_API_URL", "PREFECT_PROFILES_PATH", "PREFECT_PROFILE")
    }
    env.update(PREFECT_HOME=home, BENCH_FIRST_TILE_FILE=stamp)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", image, out, marks]
    meter = C.OtherLoad().start()
    t_spawn = time.time()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    t_exit = time.time()
    load = meter.stop()
    if res.returncode != 0:
        raise RuntimeError(f"cold-start child failed ({res.returncode}):\n{res.stderr[-4000:]}")
    with open(stamp) as f:
        t_first = float(f.read())
    with open(marks) as f:
        m = json.load(f)
    text = res.stdout + res.stderr
    servers = len(re.findall(r"Starting temporary server", text))
    return {
        "first_tile": t_first - t_spawn,
        "total": t_exit - t_spawn,
        "to_main": m["main"] - t_spawn,
        "imports": m["imported"] - m["main"],
        "call_to_first_tile": t_first - m["call"],
        "prefect_ready": m.get("prefect_ready", float("nan")) - m["call"],
        "cluster_ready": m.get("cluster_ready", float("nan")) - m["call"],
        "call": m["returned"] - m["call"],
        "exit": t_exit - m["returned"],
        "servers": servers,
        "tracebacks": text.count("Traceback"),
        "errors": len(re.findall(r"\| ERROR ", text)),
        "other_load": load,
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
        return 0
    args = C.parse_args(__doc__)
    C.header("cold start: fresh process to first tile (no client, fresh PREFECT_HOME)", args)
    print(
        "(--quick runs the same thing: a cold start can not be made smaller)"
        if args.quick
        else "",
        flush=True,
    )
    image = C.image_path(512, 128)
    work = tempfile.mkdtemp(prefix="cold-", dir=C.DATA)
    runs = []
    try:
        for i in range(1 if args.quick else args.repeats):
            r = one_run(image, work, i)
            runs.append(r)
            print(
                f"  run {i + 1}: first tile {r['first_tile']:.2f} s, total {r['total']:.2f} s",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for i, r in enumerate(runs):
        rows.append(
            [
                i + 1,
                f"{r['first_tile']:.2f}",
                C.verdict(r["first_tile"] < TARGET),
                f"{r['to_main']:.2f}",
                f"{r['imports']:.2f}",
                f"{r['prefect_ready']:.2f}",
                f"{r['cluster_ready']:.2f}",
                f"{r['call_to_first_tile']:.2f}",
                f"{r['call']:.2f}",
                f"{r['exit']:.2f}",
                f"{r['total']:.2f}",
                r["servers"],
                r["tracebacks"],
                r["errors"],
                f"{r['other_load']:.2f}",
            ]
        )
    med = {k: C.median([r[k] for r in runs]) for k in runs[0]}
    rows.append(
        [
            "median",
            f"{med['first_tile']:.2f}",
            C.verdict(med["first_tile"] < TARGET),
            f"{med['to_main']:.2f}",
            f"{med['imports']:.2f}",
            f"{med['prefect_ready']:.2f}",
            f"{med['cluster_ready']:.2f}",
            f"{med['call_to_first_tile']:.2f}",
            f"{med['call']:.2f}",
            f"{med['exit']:.2f}",
            f"{med['total']:.2f}",
            "",
            "",
            "",
            f"{med['other_load']:.2f}",
        ]
    )
    C.table(
        [
            "run",
            "spawn -> first tile s",
            f"target < {TARGET:.0f} s",
            "spawn -> script runs",
            "import blockbuster",
            "call -> Prefect API up",
            "call -> cluster up",
            "call -> first tile",
            "tile_process call",
            "return -> process exit",
            "total wall s",
            "temporary Prefect servers",
            "tracebacks",
            "ERROR lines",
            "other load, cores",
        ],
        rows,
        title="cold start, 512 x 512 uint16, 16 tiles",
    )
    print(
        f"\ntarget (first tile < {TARGET:.0f} s after a cold process start): "
        f"{C.verdict(med['first_tile'] < TARGET)}"
    )
    with open(
        os.path.join(C.DATA, f"results-cold{'-quick' if args.quick else ''}.json"), "w"
    ) as f:
        json.dump(runs, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

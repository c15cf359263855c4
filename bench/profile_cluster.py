"""Where a warm run's time goes on the benchmark cluster: CPU per process and py-spy.

Starts the benchmark cluster, warms it up, then runs one measurement (``merge``:
``merge_tile_labels`` of the stored per-tile labels; ``floor``: the dask copy;
``e2e``: ``tile_process`` with the threshold+label fn; ``e2e-floor``: its map_blocks
baseline) while

- psutil accounts the CPU seconds (user+sys) of the driver process (Dask scheduler,
  Prefect's temporary server, the flow) and of each worker process, and
- ``py-spy record`` samples one worker (``--spy``): where its Dask task thread spends its
  wall time (inclusive share by frame), and
- cProfile profiles the driver's main thread, which runs the flow and its stage tasks
  (``--cprofile``): Prefect's own work shows up there.

    python bench/profile_cluster.py merge --tile 128 [--spy] [--cprofile]
    python bench/profile_cluster.py e2e --tile 256 --spy
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def processes(client) -> dict[str, list[int]]:
    """pids by role: the driver itself, the worker and nanny processes, and the driver's
    other children (Prefect's temporary server when it runs as a subprocess)."""
    import psutil

    me = psutil.Process()
    workers = list(client.run(os.getpid).values())
    try:
        nannies = list(client.run(os.getpid, nanny=True).values())
    except Exception:
        nannies = []
    roles = {
        "driver (scheduler, nannies, client, flow)": [me.pid],
        "workers": workers,
        "other children (Prefect server?)": [],
    }
    if any(p != me.pid for p in nannies):
        roles["nannies"] = [p for p in nannies if p != me.pid]
    for ch in me.children(recursive=True):
        if ch.pid in workers or ch.pid in nannies:
            continue
        try:
            cmd = " ".join(ch.cmdline())
        except psutil.Error:
            continue
        if "py-spy" in cmd:
            continue
        roles["other children (Prefect server?)"].append(ch.pid)
    return roles


def cpu_of(roles):
    import psutil

    out = {}
    for name, pids in roles.items():
        out[name] = 0.0
        for pid in pids:
            try:
                t = psutil.Process(pid).cpu_times()  # this process only
                out[name] += t.user + t.system
            except psutil.Error:
                pass
    return out


def summarize(raw_path: str, label: str, top: int) -> None:
    """From py-spy's raw output (``--threads --idle``): how the Dask task thread of the
    sampled worker spends its wall time — fraction of samples inside a task, and the
    frames with the largest inclusive share of that thread's samples."""
    rows = []
    with open(raw_path) as f:
        for ln in f:
            stack, _, n = ln.rstrip().rpartition(" ")
            if stack:
                rows.append((stack.split(";"), int(n)))
    task_threads = collections.Counter()
    for fr, n in rows:
        if any("_run_task" in x for x in fr):
            task_threads[fr[0]] += n
    if not task_threads:
        print(f"\n## {label}: no task samples")
        return
    tt = task_threads.most_common(1)[0][0]
    mine = [(fr, n) for fr, n in rows if fr[0] == tt]
    total = sum(n for _, n in mine)
    in_task = sum(n for fr, n in mine if any("_run_task" in x for x in fr))
    print(
        f"\n## {label}, task thread: {total} samples, {100 * in_task / total:.0f}% inside a "
        "task; inclusive share of the thread's wall time by frame:"
    )
    incl = collections.Counter()
    for fr, n in mine:
        seen = set()
        for x in fr[1:]:
            key = x.split(":")[0] + ")" if ":" in x else x
            if key not in seen:
                seen.add(key)
                incl[key] += n
    shown = 0
    for key, n in incl.most_common():
        if any(
            k in key
            for k in (
                "threading.py",
                "thread.py",
                "_concurrent_futures",
                "distributed/",
                "_task_spec",
                "utils.py",
            )
        ):
            continue
        print(f"   {100 * n / total:5.1f}%  {key[:140]}")
        shown += 1
        if shown >= top:
            break


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["merge", "floor", "e2e", "e2e-floor"])
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--spy", action="store_true")
    p.add_argument("--top", type=int, default=15)
    p.add_argument(
        "--cprofile",
        action="store_true",
        help="cProfile the driver's main thread (the flow and its stage tasks)",
    )
    a = p.parse_args()
    import dask.array as da
    import numpy as np

    from blockbuster.api import merge_tile_labels, tile_process

    if a.what.startswith("e2e"):
        src = C.image_path(a.n, a.tile)
    else:
        src = C.tile_labels_path(a.n, a.tile)
    client, cluster = C.make_client()
    try:
        C.warm_up(client)
        workers = {f"worker{i}": pid for i, pid in enumerate(client.run(os.getpid).values())}
        {"driver": os.getpid(), **workers}
        roles = processes(client)
        spies = []
        if a.spy:
            for name, pid in list(workers.items())[:1]:  # one worker, lightly sampled
                path = os.path.join(C.DATA, f"spy-{a.what}-{name}.txt")
                spies.append(
                    (
                        name,
                        path,
                        subprocess.Popen(
                            [
                                "py-spy",
                                "record",
                                "--pid",
                                str(pid),
                                "--format",
                                "raw",
                                "-r",
                                "100",
                                "--threads",
                                "--idle",
                                "-o",
                                path,
                                "--nonblocking",
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        ),
                    )
                )
            time.sleep(1.0)
        out = C.scratch(f"prof-{a.what}.zarr")
        c0 = cpu_of(roles)
        import cProfile

        prof = cProfile.Profile() if a.cprofile else None
        if prof:
            prof.enable()
        t0 = time.perf_counter()
        summ = None
        if a.what == "merge":
            _, summ = merge_tile_labels(src, write_to=out, return_summary=True)
        elif a.what == "floor":
            da.from_zarr(src).to_zarr(out)
        elif a.what == "e2e":
            _, summ = tile_process(
                src,
                C.threshold_label,
                tile_shape=(a.tile, a.tile),
                write_to=out,
                return_summary=True,
            )
        else:
            da.from_zarr(src).map_blocks(C.threshold_label, dtype=np.int32).to_zarr(out)
        wall = time.perf_counter() - t0
        if prof:
            prof.disable()
        c1 = cpu_of(roles)
        for _, _, sp in spies:
            sp.send_signal(2)
        for _, _, sp in spies:
            sp.wait(timeout=60)
        print(f"# {a.what}, {a.n} x {a.n}, tile {a.tile}: wall {wall:.2f} s")
        if summ:
            print("stages:", {k: round(v, 2) for k, v in summ["timings"].items()})
        for k in roles:
            print(
                f"  CPU s {k} {roles[k]}: {c1[k] - c0[k]:.2f} ({100 * (c1[k] - c0[k]) / wall:.0f}% of "
                f"one core)"
            )
        if prof:
            import io
            import pstats

            for key in ("cumulative", "tottime"):
                buf = io.StringIO()
                pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(3 * a.top)
                print(f"\n## driver main thread, cProfile by {key}")
                lines = buf.getvalue().splitlines()
                i = next(j for j, ln in enumerate(lines) if "ncalls" in ln)
                print("\n".join(lines[i : i + 3 * a.top + 1]))
        for name, path, _ in spies:
            if os.path.exists(path):
                summarize(path, f"py-spy {name}", a.top)
    finally:
        client.close()
        cluster.close()
        C.drop_outputs()
    return 0


if __name__ == "__main__":
    sys.exit(main())

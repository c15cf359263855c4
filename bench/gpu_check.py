"""The GPU path on a machine with NVIDIA GPUs: what to run when one is lent.

Checks, each printed and written to ``$OUT/gpu_check.json`` (or bench/_data/) even when
a later one fails:

1. ``gpu_info()``: the GPUs nvidia-ml-py sees, with free memory;
2. ``make_local_cluster(use_gpu=True)``: one single-threaded worker per GPU, each with
   a ``GPU`` resource and its own ``CUDA_VISIBLE_DEVICES`` (read back from the
   workers, with ``torch.cuda.device_count()`` seen by each);
3. ``tile_shape="auto"`` with ``use_gpu=True`` on a 3D volume: the tile it picks from
   the free VRAM and the reasoning;
4. Cellpose 3 on the GPU through ``tile_process`` (a randomly initialised network of the
   standard architecture saved locally: nothing is downloaded; the cost per tile is the
   real model's): wall time, ``fn`` seconds per tile, tiles per worker (GPU), and the
   same tiles on CPU for a ratio (CPU run on a subset, scaled per tile).

    python bench/gpu_check.py [--size 2048] [--tile 512]

Needs the ``gpu`` and ``cellpose`` extras and a CUDA build of torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import numpy as np


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--tile", type=int, default=512)
    a = p.parse_args()
    out_dir = os.environ.get("OUT") or os.path.join(os.path.dirname(__file__), "_data")
    os.makedirs(out_dir, exist_ok=True)
    report: dict = {}

    def save():
        with open(os.path.join(out_dir, "gpu_check.json"), "w") as f:
            json.dump(report, f, indent=1, default=str)

    def step(name, func):
        t0 = time.perf_counter()
        try:
            report[name] = func()
        except Exception as exc:  # keep going: later steps may still tell something
            report[name] = {
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
        report[name + "_seconds"] = round(time.perf_counter() - t0, 2)
        print(
            f"## {name} ({report[name + '_seconds']} s)\n"
            f"{json.dumps(report[name], indent=1, default=str)[:3000]}",
            flush=True,
        )
        save()

    from blockbuster.api import tile_process
    from blockbuster.cluster import gpu_info, make_local_cluster

    step("gpus", gpu_info)

    state: dict = {}

    def cluster():
        client, cl = make_local_cluster(use_gpu=True)
        state["client"], state["cluster"] = client, cl

        def probe():
            import os as _os

            try:
                import torch

                n = torch.cuda.device_count()
            except Exception as exc:  # noqa: BLE001
                n = f"torch: {exc}"
            return {
                "pid": _os.getpid(),
                "CUDA_VISIBLE_DEVICES": _os.environ.get("CUDA_VISIBLE_DEVICES"),
                "torch_cuda_devices": n,
            }

        info = client.scheduler_info()
        return {
            "workers": {
                w: {"nthreads": d.get("nthreads"), "resources": d.get("resources")}
                for w, d in info["workers"].items()
            },
            "probe": client.run(probe),
        }

    step("cluster", cluster)

    def auto():
        from blockbuster.api import choose_tile_shape
        from blockbuster.io import open_image
        from blockbuster.plugins.cellpose import cellpose_fn

        vol = np.zeros((512, 2048, 2048), np.uint16)  # only its shape and dtype matter
        src = open_image(vol)
        shape, why = choose_tile_shape(
            src, cellpose_fn("cyto3", gpu=True), 16, True, client=state.get("client")
        )
        return {"image": vol.shape, "tile_shape": shape, "why": why}

    step("auto_tile_shape", auto)

    def cellpose():
        import torch
        from cellpose.resnet_torch import CPnet

        from blockbuster.plugins.cellpose import cellpose_fn
        from blockbuster.synthetic import synthetic_nuclei

        model = os.path.join(out_dir, "random_cp3")
        if not os.path.exists(model):
            torch.manual_seed(0)
            CPnet([2, 32, 64, 128, 256], 3, sz=3, diam_mean=30.0).save_model(model)
        img = synthetic_nuclei((a.size, a.size), seed=0)[0]
        res = {}
        for gpu in (True, False):
            fn = cellpose_fn(
                pretrained_model=model,
                gpu=gpu,
                diameter=30,
                flow_threshold=0,
                cellprob_threshold=-3,
            )
            data = img if gpu else img[: 2 * a.tile, : 2 * a.tile]  # CPU: 4 tiles only
            t0 = time.perf_counter()
            _, s = tile_process(
                data, fn, tile_shape=(a.tile, a.tile), overlap=16, use_gpu=gpu, return_summary=True
            )
            wall = time.perf_counter() - t0
            fs = [r["fn_seconds"] for r in s["tiles"]]
            per_pid: dict = {}
            for r in s["tiles"]:
                per_pid[r["pid"]] = per_pid.get(r["pid"], 0) + 1
            res["gpu" if gpu else "cpu"] = {
                "image": list(data.shape),
                "tiles": s["n_tiles"],
                "wall_s": round(wall, 2),
                "fn_s_median": round(float(np.median(fs)), 4),
                "tiles_per_worker_pid": per_pid,
                "labels": s["labels_after_merge"],
            }
        res["fn_per_tile_cpu_over_gpu"] = round(
            res["cpu"]["fn_s_median"] / max(res["gpu"]["fn_s_median"], 1e-9), 1
        )
        return res

    step("cellpose", cellpose)

    for k in ("client", "cluster"):
        if k in state:
            state[k].close()
    ok = not any(isinstance(v, dict) and "error" in v for v in report.values())
    print("all steps ran" if ok else "some steps failed (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

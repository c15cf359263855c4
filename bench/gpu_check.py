"""The GPU path on one lent GPU machine, in under 10 minutes: is the GPU kept busy?

One script, figures written to ``$OUT/gpu_check.json`` (else ``bench/_data/``) after
every step, so a later failure keeps what was measured:

1. ``gpus``: what NVML sees (UUIDs, MIG, free memory) and ``CUDA_VISIBLE_DEVICES``;
2. ``layout``: the workers ``make_local_cluster(use_gpu=True)`` starts (GPU workers with
   their ``GPU`` resource, pinned UUID and host memory; CPU workers), read back from the
   workers, with ``torch.cuda.device_count()`` seen in each GPU worker (expected: 1);
3. ``input``: a zarr stack of ``--planes`` planes of ``--size``^2 ``uint16`` synthetic
   nuclei, chunked (1, 2048, 2048): the headline call's tiles are its chunks;
4. ``auto``: what ``tile_shape="auto"`` picks for that input with the GPU function
   (free VRAM measured on the GPU workers, the host limit, the 64 Mi voxel cap);
5. ``cyto3``: the seed's headline call end to end on the GPU cluster::

       tile_process(zarr, cellpose_fn(<cyto3>, gpu=True, diameter=30),
                    tile_shape=(1, 2048, 2048), overlap=20, write_to=..., progress=True)

   with a sampler thread reading NVML utilisation and memory of every GPU and the host
   CPU per core at ``--hz`` (default 20 Hz). Reported: GPU busy (mean utilisation and
   share of samples >= 50 %) inside the segment stage (from the first tile's ``fn``
   start to the last one's end, from the run's per-tile records), tile seconds (median,
   p90), host CPU per core (mean over the stage), peak VRAM used per GPU, wall time.
   cyto3's weights are used when they are in Cellpose's model directory; else a
   randomly initialised network of the same architecture (the same cost per tile;
   meaningless labels; nothing is downloaded). The batch size is chosen by
   ``cellpose_fn`` for the GPU;
6. ``cpsam``: the same with Cellpose-SAM when Cellpose 4 is installed and its weights
   are present (else the reason it was skipped).

    python bench/gpu_check.py [--planes 8] [--size 4096] [--hz 20]

Needs the ``gpu`` and ``cellpose`` extras and a CUDA build of torch. The issue's goal:
GPU busy >= 90 % during the segment stage with cyto3 on 2048^2 tiles.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import traceback

import numpy as np


class Sampler:
    """NVML utilisation / memory of every GPU and psutil CPU per core, at ``hz``."""

    def __init__(self, hz: float):
        self.dt = 1.0 / hz
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="gpu-sampler")

    def _run(self) -> None:
        import psutil
        import pynvml

        pynvml.nvmlInit()
        handles = [
            pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())
        ]
        psutil.cpu_percent(percpu=True)
        nxt = time.perf_counter()
        while not self._stop.is_set():
            t = time.time()
            gpus = []
            for h in handles:
                try:
                    u = pynvml.nvmlDeviceGetUtilizationRates(h)
                    m = pynvml.nvmlDeviceGetMemoryInfo(h)
                    gpus.append({"util": int(u.gpu), "mem_used": int(m.used)})
                except Exception:  # MIG mode has no utilisation counter
                    gpus.append({"util": None, "mem_used": None})
            self.samples.append({"t": t, "gpus": gpus, "cpu": psutil.cpu_percent(percpu=True)})
            nxt += self.dt
            time.sleep(max(0.0, nxt - time.perf_counter()))
        pynvml.nvmlShutdown()

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, t0: float, t1: float) -> dict:
        s = [x for x in self.samples if t0 <= x["t"] <= t1]
        if not s:
            return {"samples": 0}
        n_gpu = len(s[0]["gpus"])
        out: dict = {
            "samples": len(s),
            "seconds": round(t1 - t0, 2),
            "rate_hz": round(len(s) / max(t1 - t0, 1e-9), 1),
        }
        per_gpu = []
        for g in range(n_gpu):
            util = [x["gpus"][g]["util"] for x in s if x["gpus"][g]["util"] is not None]
            mem = [x["gpus"][g]["mem_used"] for x in self.samples if x["gpus"][g]["mem_used"]]
            per_gpu.append(
                {
                    "busy_mean_percent": round(float(np.mean(util)), 1) if util else None,
                    "samples_at_least_50_percent": round(float(np.mean(np.array(util) >= 50)), 3)
                    if util
                    else None,
                    "peak_vram_used_gib": round(max(mem) / 2**30, 2) if mem else None,
                }
            )
        cpu = np.array([x["cpu"] for x in s], float)
        out["gpus"] = per_gpu
        out["host_cpu_percent_per_core"] = [round(float(c), 1) for c in cpu.mean(axis=0)]
        out["host_cpu_percent_mean"] = round(float(cpu.mean()), 1)
        return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--planes", type=int, default=8)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--hz", type=float, default=20.0)
    a = p.parse_args()
    out_dir = os.environ.get("OUT") or os.path.join(os.path.dirname(__file__), "_data")
    os.makedirs(out_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="gpu-check-")
    report: dict = {"args": vars(a)}

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

    from blockbuster import tile_process
    from blockbuster.cluster import gpu_info, make_local_cluster, nvml_devices

    step(
        "gpus",
        lambda: {
            "nvml": nvml_devices(),
            "visible": gpu_info(),
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        },
    )
    state: dict = {}

    def layout():
        client, cl = make_local_cluster(use_gpu=True)
        state["client"], state["cluster"] = client, cl
        client.wait_for_workers(len(cl.workers), timeout=300)

        def probe():
            import os as _os

            try:
                import torch

                n = torch.cuda.device_count()
            except Exception as exc:  # noqa: BLE001
                n = f"torch: {exc}"
            return {
                "CUDA_VISIBLE_DEVICES": _os.environ.get("CUDA_VISIBLE_DEVICES"),
                "CUDA_DEVICE_ORDER": _os.environ.get("CUDA_DEVICE_ORDER"),
                "torch_cuda_devices": n,
            }

        info = client.scheduler_info(n_workers=-1)["workers"]
        probes = client.run(probe)
        return {
            w["name"]: {
                "nthreads": w.get("nthreads"),
                "resources": w.get("resources"),
                "memory_limit_gib": round(w.get("memory_limit", 0) / 2**30, 2),
                **probes.get(addr, {}),
            }
            for addr, w in info.items()
        }

    step("layout", layout)

    def make_input():
        import zarr

        from blockbuster.synthetic import synthetic_nuclei

        plane = synthetic_nuclei((2048, 2048), seed=0)[0].astype(np.uint16)
        path = os.path.join(work, "image.zarr")
        arr = zarr.create_array(
            store=path,
            shape=(a.planes, a.size, a.size),
            chunks=(1, 2048, 2048),
            dtype=np.uint16,
        )
        for z in range(a.planes):
            for y in range(0, a.size, 2048):
                for x in range(0, a.size, 2048):
                    arr[z, y : y + 2048, x : x + 2048] = np.roll(plane, (z * 97 + y, x), (0, 1))[
                        : min(2048, a.size - y), : min(2048, a.size - x)
                    ]
        state["input"] = path
        return {"path": path, "shape": arr.shape, "chunks": arr.chunks, "tiles_2048": arr.nchunks}

    step("input", make_input)

    def model_for(major: int) -> tuple[str | None, str]:
        from blockbuster.plugins.cellpose import cellpose_fn

        name = "cyto3" if major < 4 else "cpsam"
        try:
            return str(cellpose_fn(name).resolve_model_path()), f"{name} weights"
        except Exception:
            pass
        if major >= 4:
            return None, "cpsam weights are not in Cellpose's model directory"
        import torch
        from cellpose.resnet_torch import CPnet

        path = os.path.join(work, "random_cyto3")
        torch.manual_seed(0)
        CPnet([2, 32, 64, 128, 256], 3, sz=3, diam_mean=30.0).save_model(path)
        return path, "a random network of cyto3's architecture (cyto3 weights not present)"

    def headline(label: str):
        from blockbuster.api import choose_tile_shape
        from blockbuster.io import open_image
        from blockbuster.plugins.cellpose import cellpose_fn, cellpose_major_version

        major = cellpose_major_version()
        if major is None:
            return {"skipped": "Cellpose is not installed"}
        if label == "cpsam" and major < 4:
            return {"skipped": f"Cellpose {major} is installed; cpsam needs Cellpose 4"}
        model, what = model_for(major)
        if model is None:
            return {"skipped": what}
        extra = {"flow_threshold": 0, "cellprob_threshold": -3} if "random" in what else {}
        fn = cellpose_fn(pretrained_model=model, gpu=True, diameter=30, **extra)
        client = state["client"]
        res: dict = {"model": what, "cellpose_major": major}
        with client.as_current():
            shape, why = choose_tile_shape(open_image(state["input"]), fn, 20, True, client)
            res["auto_tile_shape"] = {"tile_shape": shape, "why": why}
            out = os.path.join(work, f"labels-{label}.zarr")
            with Sampler(a.hz) as sampler:
                t0 = time.time()
                _, s = tile_process(
                    state["input"],
                    fn,
                    tile_shape=(1, 2048, 2048),
                    overlap=20,
                    write_to=out,
                    progress=True,
                    return_summary=True,
                )
                t1 = time.time()
        recs = [r for r in s["tiles"] if "fn_started" in r]
        fs = np.array([r["fn_seconds"] for r in recs])
        seg0 = min(r["fn_started"] for r in recs)
        seg1 = max(r["fn_started"] + r["fn_seconds"] for r in recs)
        per_pid: dict = {}
        for r in recs:
            per_pid[r["pid"]] = per_pid.get(r["pid"], 0) + 1
        res.update(
            wall_s=round(t1 - t0, 2),
            tiles=len(recs),
            tile_seconds_median=round(float(np.median(fs)), 3),
            tile_seconds_p90=round(float(np.percentile(fs, 90)), 3),
            tiles_per_worker_pid=per_pid,
            labels=s.get("labels_after_merge"),
            timings=s.get("timings"),
            segment_stage=sampler.between(seg0, seg1),
            whole_run=sampler.between(t0, t1),
        )
        busy = [g["busy_mean_percent"] for g in res["segment_stage"].get("gpus", [])]
        res["goal_gpu_busy_90_percent_met"] = bool(busy) and all(
            b is not None and b >= 90 for b in busy
        )
        return res

    step("cyto3", lambda: headline("cyto3"))
    step("cpsam", lambda: headline("cpsam"))
    for k in ("client", "cluster"):
        if k in state:
            state[k].close()
    ok = not any(isinstance(v, dict) and "error" in v for v in report.values())
    print("all steps ran" if ok else "some steps failed (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

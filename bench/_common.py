"""Shared pieces of the benchmarks: data, cluster, timing, tables.

Data lives under ``bench/_data`` (gitignored) and is made once, then reused:

- ``image-<N>-c<C>.zarr``: a ``uint16`` N x N smoothed random field (Gaussian-filtered
  white noise, z-scored, stored as ``32768 + 1000 * z``), chunks C x C. Thresholding it at
  ``THRESHOLD`` (z > 1, ~16 % of the pixels) gives blob-like "cells" of a few hundred
  pixels, many of them cut by tile seams.
- ``tilelabels-<N>-t<T>.zarr``: ``int32`` per-tile labels of that binary image: every
  T x T chunk labelled independently with ``scipy.ndimage.label`` (ids restart at 1 in
  every tile), chunks = T x T.

Every array is written with zarr v3's default codec (``zarr.create_array`` without
``compressors``), and every output (ours and the baselines) too.
"""

from __future__ import annotations

import argparse
import atexit
import itertools
import os
import platform
import shutil
import statistics
import sys
import time
import uuid

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "_data")
SIGMA = 4.0  # smoothing of the random field, pixels
THRESHOLD = 32768 + 1000  # z > 1
SEED = 0
REPEATS = 3


def parse_args(doc: str, extra=()) -> argparse.Namespace:
    """``--quick``, ``--repeats`` and any ``extra`` ``(flag, add_argument kwargs)``."""
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run (<1 min)")
    p.add_argument(
        "--repeats",
        type=int,
        default=REPEATS,
        help=f"repetitions per measurement, median reported (default {REPEATS})",
    )
    for flag, kwargs in extra:
        p.add_argument(flag, **kwargs)
    return p.parse_args()


# -- data ------------------------------------------------------------------------------


def _field(n: int) -> np.ndarray:
    from scipy import ndimage as ndi

    rng = np.random.default_rng(SEED + n)
    f = rng.standard_normal((n, n), dtype=np.float32)
    f = ndi.gaussian_filter(f, SIGMA, mode="wrap")
    f -= f.mean()
    f /= f.std()
    return np.clip(32768 + 1000 * f, 0, 65535).astype(np.uint16)


def _write(path: str, arr: np.ndarray, chunks) -> None:
    import zarr

    tmp = path + f".tmp-{uuid.uuid4().hex[:6]}"
    z = zarr.create_array(
        store=tmp, shape=arr.shape, chunks=tuple(chunks), dtype=arr.dtype, fill_value=0
    )
    z[...] = arr
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(tmp, path)


def _read_image(n: int) -> np.ndarray:
    import zarr

    for name in sorted(os.listdir(DATA)) if os.path.isdir(DATA) else []:
        if name.startswith(f"image-{n}-c") and name.endswith(".zarr"):
            return zarr.open_array(os.path.join(DATA, name), mode="r")[...]
    return _field(n)


def image_path(n: int, chunk: int) -> str:
    """The uint16 N x N image with chunk x chunk chunks (made on first use)."""
    os.makedirs(DATA, exist_ok=True)
    path = os.path.join(DATA, f"image-{n}-c{chunk}.zarr")
    if not os.path.exists(path):
        t0 = time.perf_counter()
        _write(path, _read_image(n), (chunk, chunk))
        print(f"  [data] wrote {path} in {time.perf_counter() - t0:.1f} s", flush=True)
    return path


def tile_labels_path(n: int, tile: int) -> str:
    """Per-tile labels (int32, ids restart in every tile) of image > THRESHOLD."""
    os.makedirs(DATA, exist_ok=True)
    path = os.path.join(DATA, f"tilelabels-{n}-t{tile}.zarr")
    if not os.path.exists(path):
        from scipy import ndimage as ndi

        t0 = time.perf_counter()
        binary = _read_image(n) > THRESHOLD
        out = np.zeros(binary.shape, np.int32)
        for i in range(0, n, tile):
            for j in range(0, n, tile):
                out[i : i + tile, j : j + tile] = ndi.label(binary[i : i + tile, j : j + tile])[0]
        _write(path, out, (tile, tile))
        print(f"  [data] wrote {path} in {time.perf_counter() - t0:.1f} s", flush=True)
    return path


def threshold_label(tile):
    """The cheap per-tile function of the end-to-end benchmark: threshold, then label."""
    from scipy import ndimage as ndi

    return ndi.label(tile > THRESHOLD)[0]


def data_stats(n: int) -> dict:
    """Whole-image truth (connectivity 1) for the data description."""
    from scipy import ndimage as ndi

    binary = _read_image(n) > THRESHOLD
    lab, k = ndi.label(binary)
    return {
        "foreground": float(binary.mean()),
        "objects": int(k),
        "mean_area": float(binary.sum() / max(k, 1)),
    }


def scratch(name: str) -> str:
    """A fresh output path under bench/_data/out (removed first)."""
    d = os.path.join(DATA, "out")
    os.makedirs(d, exist_ok=True)
    p = os.path.join(d, name)
    rmtree(p)
    return p


_DISCARDED: list[str] = []
_FRESH = itertools.count()


def fresh(name: str) -> str:
    """An output path not used before in this process, for a timed run: pass it to
    :func:`discard` afterwards. ``merge-ours.zarr`` -> ``merge-ours-<pid>-<k>.zarr``."""
    stem, ext = os.path.splitext(name)
    return scratch(f"{stem}-{os.getpid()}-{next(_FRESH)}{ext}")


def settle(client=None, timeout: float = 60.0) -> None:
    """Let the last timed run finish what it left behind, outside any timing: the
    scheduler forgetting its tasks (``client``'s scheduler holds none), and the dirty
    pages written back (``os.sync``).

    A dask graph of 16,384 tasks (the dask copy at 16,384 tiles) returns before the
    scheduler, which runs in this process, has released and forgotten its tasks; that
    work then competes for the GIL with whatever is timed next: ours at 16,384 tiles
    measured 3.18-3.44 s right after the copy and 2.57-2.74 s right after another of
    ours (same code, same run, bench/scaling.py --large).
    """
    if client is not None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)):
                break
            time.sleep(0.05)
    os.sync()


def discard(path: str) -> None:
    """Remove a timed run's output when this process exits, not now.

    On this machine's ext4, creating a file right after many were deleted is 5-20x
    slower than otherwise (0.2-0.9 ms vs 0.02-0.05 ms; docs/benchmarks.md, section 7):
    removing each output before the next run would charge the
    removal to whichever run comes next, most at 4096 tiles (4096 chunk files). Ours
    and the baselines alike write to fresh paths and leave them until the end.
    """
    _DISCARDED.append(path)
    if len(_DISCARDED) == 1:
        atexit.register(_remove_discarded)


def _remove_discarded() -> None:
    for p in _DISCARDED:
        rmtree(p)


def rmtree(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)
    # the default staging area of blockbuster lives next to the output
    parent, base = os.path.split(path)
    st = os.path.join(parent, f".{base}.blockbuster-staging")
    if os.path.isdir(st):
        shutil.rmtree(st, ignore_errors=True)


def drop_outputs() -> None:
    shutil.rmtree(os.path.join(DATA, "out"), ignore_errors=True)


# -- cluster -----------------------------------------------------------------------------


def make_client():
    """The benchmark cluster: 2 worker processes, 1 thread each."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    return Client(cluster), cluster


def _warm_fn(tile):
    from scipy import ndimage as ndi

    return ndi.label(tile > 0)[0]


def warm_up(client) -> float:
    """One small tile_process + merge_tile_labels so Prefect's server and the worker
    imports are warm before anything is timed. Returns its seconds."""
    import dask.array as da

    from blockbuster.api import merge_tile_labels, tile_process

    t0 = time.perf_counter()
    img = np.zeros((256, 256), np.uint8)
    img[10:200, 30:100] = 1
    tile_process(img, _warm_fn, tile_shape=(64, 64), write_to=scratch("warm1.zarr"))
    lab = da.from_array(img.astype(np.int32), chunks=64)
    merge_tile_labels(lab, write_to=scratch("warm2.zarr"))
    da.from_array(img, chunks=64).to_zarr(scratch("warm3.zarr"))
    for p in ("warm1.zarr", "warm2.zarr", "warm3.zarr"):
        rmtree(os.path.join(DATA, "out", p))
    return time.perf_counter() - t0


# -- timing and tables ---------------------------------------------------------------------


class OtherLoad:
    """CPU used by processes outside this benchmark's process tree while it measures.

    The machine may be shared; ``cores()`` is the average number of cores that other
    processes kept busy between ``start()`` and ``stop()`` (0 = the machine was ours).
    """

    def _busy(self) -> float:
        import psutil

        t = psutil.cpu_times()
        return (
            t.user
            + t.system
            + getattr(t, "nice", 0)
            + getattr(t, "irq", 0)
            + getattr(t, "softirq", 0)
            + getattr(t, "steal", 0)
        )

    def _mine(self) -> float:
        """CPU seconds of this process, its live descendants and its reaped children
        (whose own reaped descendants are included by the kernel)."""
        import resource

        import psutil

        me = psutil.Process()
        total = 0.0
        for p in [me] + me.children(recursive=True):
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return total + r.ru_utime + r.ru_stime

    def start(self) -> OtherLoad:
        import time as _t

        self._t0 = _t.perf_counter()
        self._b0 = self._busy()
        self._m0 = self._mine()
        return self

    def stop(self) -> float:
        import time as _t

        wall = _t.perf_counter() - self._t0
        other = (self._busy() - self._b0) - (self._mine() - self._m0)
        self.value = max(0.0, other / wall) if wall > 0 else 0.0
        return self.value


def median(xs):
    return statistics.median(xs)


def fmt_s(x: float) -> str:
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


def table(headers: list[str], rows: list[list], title: str | None = None) -> str:
    """A GitHub-markdown table (also readable in a terminal)."""
    cells = [[str(c) for c in r] for r in rows]
    w = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
        for i, h in enumerate(headers)
    ]

    def line(r):
        return "| " + " | ".join(c.rjust(w[i]) for i, c in enumerate(r)) + " |"

    out = [line(headers), "|" + "|".join("-" * (x + 1) + ":" for x in w) + "|"]
    out += [line(r) for r in cells]
    text = "\n".join(out)
    if title:
        text = f"\n### {title}\n\n{text}"
    print(text, flush=True)
    return text


def machine() -> str:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    cpu = ln.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import dask
    import distributed
    import prefect
    import zarr

    return (
        f"{os.cpu_count()} cores ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
        f"Python {platform.python_version()}, prefect {prefect.__version__}, "
        f"dask/distributed {dask.__version__}/{distributed.__version__}, "
        f"zarr {zarr.__version__}, numpy {np.__version__}"
    )


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def package_version() -> str:
    """The commit of the package measured (the package is edited while benchmarks run)."""
    import subprocess

    root = os.path.dirname(HERE)
    try:
        rev = subprocess.run(
            [
                "git",
                "-C",
                root,
                "log",
                "-1",
                "--format=%h %cd",
                "--date=format:%H:%M",
                "--",
                "blockbuster",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--", "blockbuster"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"blockbuster at {rev or 'unknown'}{' + uncommitted changes' if dirty else ''}"


def header(title: str, args) -> None:
    print(f"# {title}{' (--quick)' if args.quick else ''}", flush=True)
    print(machine(), flush=True)
    print(f"{package_version()}; started {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    print(
        f"cluster: LocalCluster(n_workers=2, threads_per_worker=1, processes=True); "
        f"median of {args.repeats}",
        flush=True,
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit("helper module; run bench/merge.py, bench/scaling.py, ...")

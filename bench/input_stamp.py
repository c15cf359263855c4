"""Cost of the input stamp (every chunk file's path, size, mtime, ctime) at 10^3, 10^4 and
10^5 chunks on local disk, against the metadata-only stamp (opt-in, BLOCKBUSTER_INPUT_STAMP=
metadata) and against reading the pixels (what a content hash would at least cost).

The arrays are zarr v3, one byte per pixel, 32 x 32 chunks written as files of their own
(``c/<i>/<j>``), so the number of chunk files is the number of chunks. Each stamp is taken
``--repeats`` times (the page cache warm after the first: the median is reported) with
``open_path(...).identity()``, the call a run makes once, in the driver.

    python bench/input_stamp.py [--quick] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "_data")


def make(n_chunks: int) -> str:
    import numpy as np
    import zarr

    side = int(round(n_chunks**0.5))
    assert side * side == n_chunks
    path = os.path.join(DATA, f"stamp-{n_chunks}.zarr")
    if os.path.exists(os.path.join(path, "zarr.json")):
        return path
    a = zarr.create_array(
        path, shape=(side * 32, side * 32), chunks=(32, 32), dtype="u1", compressors=None
    )
    rng = np.random.default_rng(0)
    rows = max(1, 4096 // side)
    for i in range(0, side, rows):  # a band of chunk rows at a time
        h = min(rows, side - i) * 32
        a[i * 32 : i * 32 + h] = rng.integers(1, 255, (h, side * 32), dtype=np.uint8)
    return path


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="10^3 and 10^4 chunks only")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import zarr

    from blockbuster.io import STAMP_ENV, open_path

    sizes = [1_024, 10_000] if args.quick else [1_024, 10_000, 100_489]
    print(f"cpus {os.cpu_count()}, repeats {args.repeats}, data in {DATA}")
    print(
        f"{'chunks':>8} {'stamp s':>9} {'per chunk':>10} {'metadata s':>11} "
        f"{'read pixels s':>14} {'stamp/read':>11}"
    )
    for n in sizes:
        path = make(n)
        os.environ.pop(STAMP_ENV, None)
        ident = open_path(path).identity()
        assert ident["pixels"]["files"] == n + 1, ident["pixels"]  # chunks + zarr.json
        full = timed(lambda p=path: open_path(p).identity(), args.repeats)
        os.environ[STAMP_ENV] = "metadata"
        cheap = timed(lambda p=path: open_path(p).identity(), args.repeats)
        os.environ.pop(STAMP_ENV, None)
        read = timed(lambda p=path: zarr.open_array(p, mode="r")[...], 1)
        print(
            f"{n:>8} {full:>9.3f} {full / n * 1e6:>8.1f}us {cheap:>11.4f} "
            f"{read:>14.3f} {full / read:>10.2f}x",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

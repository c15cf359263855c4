"""Cost of the staging checksums (xxh3-64 of every record header and array) on the merge
benchmark's 4096-tile case: 8192 x 8192 per-tile labels in 128 x 128 tiles.

Two runs of ``merge_tile_labels`` with ``keep_staging=True`` (warm client and Prefect):

- stored labels (``bench/merge.py``'s case): read back, in merge units (few records);
- the same labels as a dask array (``da.from_zarr``): every tile's compacted labels,
  faces and ids staged as one record each (4096 records), as ``tile_process`` does.

For each, the staged bytes are read into memory and hashed as the run hashes them:
each array once when written, once per read (the seam scan reads faces, the relabel
stage labels; counted here as two reads of every array, an upper bound), and each
header at write, index scan and read. The ratio of that hashing time to the run's wall
time is the checksums' share (target: < 5 %). A resume additionally hashes everything
once in ``Staging.verify`` (timed too).

    python bench/staging_checksum.py [--repeats 3]
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def staged_parts(root: str) -> tuple[list[bytes], list[bytes]]:
    """(headers, array blobs) of every record under a staging root."""
    heads, blobs = [], []
    tiles = os.path.join(root, "tiles")
    for name in sorted(os.listdir(tiles)):
        raw = open(os.path.join(tiles, name), "rb").read()
        pos = 0
        while pos + 16 <= len(raw):
            _, hlen, _ = struct.unpack_from("<4sIQ", raw, pos)
            header = raw[pos + 16 : pos + 16 + hlen]
            meta = json.loads(header)
            base = pos + 16 + hlen
            heads.append(header)
            for off, nbytes, *_ in meta["arrays"].values():
                blobs.append(raw[base + off : base + off + nbytes])
            pos = base + int(meta["size"])
    return heads, blobs


def hash_time(heads: list[bytes], blobs: list[bytes], repeats: int) -> float:
    import xxhash

    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(3):  # write, index scan, read
            for h in heads:
                xxhash.xxh3_64_intdigest(h)
        for _ in range(3):  # write, two reads
            for b in blobs:
                xxhash.xxh3_64_intdigest(b)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    args = C.parse_args(__doc__)
    n, t = 8192, 128
    C.header(f"staging checksums on merge_tile_labels, {n} x {n}, tiles {t} x {t}", args)
    path = C.tile_labels_path(n, t)
    import dask.array as da
    import zarr

    from blockbuster.api import merge_tile_labels
    from blockbuster.io import Staging

    client, cluster = C.make_client()
    rows = []
    try:
        print(f"warm-up: {C.warm_up(client):.1f} s", flush=True)
        for label, make in (
            ("stored (read back, units)", lambda: path),
            ("dask array (every tile staged)", lambda: da.from_zarr(zarr.open_array(path))),
        ):
            walls = []
            for _ in range(args.repeats):
                stg = C.fresh("checksum-staging")
                out = C.fresh("checksum-out.zarr")
                t0 = time.perf_counter()
                merge_tile_labels(make(), write_to=out, staging=stg, keep_staging=True)
                walls.append(time.perf_counter() - t0)
            wall = C.median(walls)
            heads, blobs = staged_parts(stg)
            h = hash_time(heads, blobs, args.repeats)
            t0 = time.perf_counter()
            Staging(stg).verify()
            verify = time.perf_counter() - t0
            nbytes = sum(map(len, blobs)) + sum(map(len, heads))
            rows.append(
                [
                    label,
                    len(heads),
                    f"{nbytes / 2**20:.1f}",
                    C.fmt_s(wall),
                    f"{h * 1e3:.1f} ms",
                    f"{100 * h / wall:.2f} %",
                    C.fmt_s(verify),
                ]
            )
            C.rmtree(stg)
    finally:
        client.close()
        cluster.close()
    C.table(
        [
            "input",
            "records",
            "staged MiB",
            "merge wall",
            "checksum time",
            "share",
            "verify (resume)",
        ],
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

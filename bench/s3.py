"""Object store benchmarks on a real S3 server (moto's server mode, its own process on
127.0.0.1), side by side in one run, same client, same store:

- merge: ``merge_tile_labels("s3://.../labels.zarr", write_to="s3://...")`` against the
  plain dask copy floor ``da.from_zarr(src).to_zarr(dst)`` of the same array, at 64,
  1024 and 4096 tiles (target <= 1.5x);
- end to end: ``tile_process("s3://.../image.zarr", fn, write_to="s3://...")`` against
  ``da.from_zarr(src).map_blocks(fn).to_zarr(dst)`` at the same tile counts, the image
  chunked as the tiles (target <= 1.0x).

Both sides read and write through zarr's ``ObjectStore`` (obstore), so the comparison is
of the pipelines, not of the client libraries. moto answers from one Python process, so
absolute times are the server's; the ratios are what this measures. Each case is a
median of ``--repeats`` runs a side (at least 5 at 64 tiles), alternating, with the
scheduler settled between runs.

    python bench/s3.py [--quick] [--repeats 1]
"""

from __future__ import annotations

import functools
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
import _common as C  # noqa: E402
import numpy as np  # noqa: E402

from blockbuster.io._stores import delete_prefix  # noqa: E402  (what the output uses)

MERGE_TARGET = 1.5
E2E_TARGET = 1.0
SMALL_REPEATS = 5


def _put(url: str, arr: np.ndarray, chunks) -> None:
    import zarr

    from blockbuster.io import zarr_location

    z = zarr.create_array(
        store=zarr_location(url, "w"), shape=arr.shape, chunks=chunks, dtype=arr.dtype
    )
    z[...] = arr


def _merge(src: str, dst: str) -> None:
    from blockbuster.api import merge_tile_labels

    merge_tile_labels(src, write_to=dst)


def _process(src: str, tile_shape: tuple[int, int], dst: str) -> None:
    from blockbuster.api import tile_process

    tile_process(src, C.threshold_label, tile_shape=tile_shape, write_to=dst)


def _floor_copy(src: str, dst: str, fn=None) -> None:
    import dask.array as da
    import zarr

    from blockbuster.io import zarr_location

    a = da.from_zarr(zarr.open_array(store=zarr_location(src, "r"), mode="r"))
    if fn is not None:
        a = a.map_blocks(fn, dtype=np.int32)
    a.to_zarr(zarr_location(dst, "w"))


def _side_by_side(client, bucket: str, repeats: int, floor, ours) -> tuple[float, float]:
    """Medians of ``ours(out)`` and ``floor(out)`` (each given a fresh output URL in
    ``bucket``), run in alternating order; ``(ours, floor)`` seconds. After each run,
    outside the timing: its output is deleted and the scheduler settled (``settle``, as
    in the other benchmarks)."""
    times: dict[str, list[float]] = {"floor": [], "ours": []}
    for r in range(repeats):
        for which in ("floor", "ours") if r % 2 == 0 else ("ours", "floor"):
            out = f"{bucket}/out-{which}-{r}.zarr"
            t0 = time.perf_counter()
            (floor if which == "floor" else ours)(out)
            times[which].append(time.perf_counter() - t0)
            delete_prefix(out)
            C.settle(client)
    return C.median(times["ours"]), C.median(times["floor"])


def _repeats(args, n_tiles: int) -> int:
    """A 64-tile case takes ~1 s a run and varies by a third between runs: at least
    :data:`SMALL_REPEATS` there."""
    return args.repeats if n_tiles > 64 else max(args.repeats, SMALL_REPEATS)


def main() -> int:
    args = C.parse_args(__doc__)
    n = 1024 if args.quick else 2048
    tiles = [128, 32] if args.quick else [256, 64, 32]  # 64 / 1024 / 4096 tiles at 2048
    C.header(f"object store (moto S3 on 127.0.0.1), {n} x {n}", args)
    import zarr
    from s3server import MotoServer

    results: dict[tuple[str, int], tuple[float, float]] = {}
    with MotoServer() as srv:
        os.environ.update(srv.env)
        client, cluster = C.make_client()
        try:
            print(f"warm-up: {C.warm_up(client):.1f} s", flush=True)
            for what in ("merge", "end to end"):
                for t in tiles:
                    # a bucket per case: moto lists a prefix by scanning every key of
                    # the bucket (S3 itself does not), so objects left by other cases
                    # would slow each LIST of ours (the copy lists nothing)
                    bucket = f"s3://{srv.new_bucket()}"
                    src = f"{bucket}/input.zarr"
                    if what == "merge":
                        _put(
                            src,
                            np.asarray(zarr.open_array(C.tile_labels_path(n, t), mode="r")[...]),
                            (t, t),
                        )
                        floor = functools.partial(_floor_copy, src)
                        ours = functools.partial(_merge, src)
                    else:
                        _put(
                            src,
                            np.asarray(zarr.open_array(C.image_path(n, t), mode="r")[...]),
                            (t, t),
                        )
                        floor = functools.partial(_floor_copy, src, fn=C.threshold_label)
                        ours = functools.partial(_process, src, (t, t))
                    results[(what, t)] = o, f = _side_by_side(
                        client, bucket, _repeats(args, (n // t) ** 2), floor, ours
                    )
                    base = "copy" if what == "merge" else "map_blocks"
                    print(
                        f"  {what}, {(n // t) ** 2} tiles: ours {o:.2f} s, {base} {f:.2f} s, "
                        f"{o / f:.2f}x",
                        flush=True,
                    )
                    delete_prefix(src)
        finally:
            client.close()
            cluster.close()
    rows = []
    for what, target in (("merge", MERGE_TARGET), ("end to end", E2E_TARGET)):
        for t in tiles:
            o, f = results[(what, t)]
            rows.append(
                [
                    f"{what}, {(n // t) ** 2} tiles of {t}x{t}",
                    C.fmt_s(f),
                    C.fmt_s(o),
                    f"{o / f:.2f}x",
                    C.verdict(o / f <= target),
                ]
            )
    C.table(
        ["what", "floor s (dask copy / map_blocks)", "ours s", "ratio", "target"],
        rows,
        title=f"S3 (moto, 127.0.0.1), merge target <= {MERGE_TARGET}x, end to end <= {E2E_TARGET}x",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

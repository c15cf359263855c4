"""Running a plan in this process, without Prefect or Dask.

The same stage functions the cluster runs, called in a loop: for debugging a tile
function, for small images, and for the property tests of the merge (thousands of
random cases, each in milliseconds).

Examples
--------
>>> import numpy as np, scipy.ndimage as ndi, tempfile, os
>>> from blockbuster.io import open_image
>>> from blockbuster.core import make_plan
>>> img = np.zeros((20, 20), np.uint8); img[2:18, 9:11] = 1
>>> src = open_image(img)
>>> plan = make_plan(src, fn_id="label", tile_shape=(8, 8))
>>> lab = run_locally(plan, src, lambda t: ndi.label(t)[0], tempfile.mkdtemp())
>>> int(lab.max() > 0), len(np.unique(lab)) - 1
(1, 1)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import zarr

from blockbuster.core import MergeTable, RunPlan
from blockbuster.io import ImageSource, Staging

from ._tile_ops import relabel_tiles, scan_tiles, segment_tiles

__all__ = ["run_locally"]


def run_locally(
    plan: RunPlan,
    src: ImageSource,
    fn: Callable | None,
    workdir: str,
    return_table: bool = False,
    sharded: bool = True,
):
    """Segment, scan, merge and relabel every tile of ``plan`` here; return the labels.

    With merge units (``plan.out_shards``) the output is sharded by units, as a run's
    zarr v3 output is, unless ``sharded`` is False."""
    if not plan.staging_root:
        plan = dataclasses.replace(plan, staging_root=os.path.join(workdir, "staging"))
    staging = Staging(plan.staging_root, durable=plan.durable, generation=plan.staging_generation)
    if staging.prepare({"run_key": plan.run_key}):
        staging.verify()
    g = plan.grid
    reader = src.reader if src.kind == "stored" else None
    tiles = list(range(g.n_tiles))
    if reader is not None:
        records = segment_tiles(plan, fn, tiles, reader=reader)
    else:
        records = segment_tiles(plan, fn, tiles, datas=[src.read(g.ext_slices(n)) for n in tiles])
    counts = np.array([r["n_labels"] for r in records], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    pairs, _ = scan_tiles(plan, tiles, counts, offsets)
    table = MergeTable.build(counts, pairs, sequential=plan.sequential)
    out_path = os.path.join(workdir, "labels.zarr")
    shards: dict[str, Any] = {"shards": plan.out_shards} if plan.out_shards and sharded else {}
    zarr.create_array(
        store=out_path,
        shape=g.shape,
        chunks=plan.out_chunks,
        dtype=table.dtype,
        fill_value=0,
        overwrite=True,
        **shards,
    )
    tiles = [n for n in range(g.n_tiles) if counts[n]]
    relabel_tiles(
        plan,
        tiles,
        [table.tile_lut(n) for n in tiles],
        out_path,
        "local",
        reader,
        [bool(records[n].get("ids_1_to_n")) for n in tiles],
    )
    out = zarr.open_array(out_path, mode="r")[...]
    return (out, table) if return_table else out

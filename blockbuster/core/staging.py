"""The staging area of a run: staged tile labels plus one small side file per tile.

Layout of a staging directory::

    <root>/staging.json      what the staging belongs to (run key, grid, dtype)
    <root>/labels.zarr       compacted per-tile labels, one chunk per tile core
    <root>/tiles/<n>.npz     per-tile record and the small arrays the merge needs
                             (boundary faces; halo bands for the overlap merge)

A tile is *finished* exactly when its side file exists: the chunk is written first and
the side file last, atomically (write to a temporary name, then ``os.replace``). A run
that crashed at any point and is started again redoes only unfinished tiles.

Examples
--------
>>> import tempfile, numpy as np
>>> st = Staging(tempfile.mkdtemp())
>>> st.prepare({"run_key": "k"}, shape=(8, 8), chunks=(4, 4), dtype="uint32")
False
>>> st.write_tile(3, {"n_labels": 2}, {"face": np.arange(4)})
>>> st.finished_tiles()
[3]
>>> rec, arrays = st.read_tile(3)
>>> rec["n_labels"], arrays["face"].tolist()
(2, [0, 1, 2, 3])
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from functools import lru_cache
from typing import Any

import numpy as np
import zarr
from numcodecs import Zstd

__all__ = ["Staging", "open_zarr_array_cached"]

_CODEC = Zstd(level=1)


@lru_cache(maxsize=32)
def open_zarr_array_cached(path: str, token: str = "", mode: str = "r+") -> zarr.Array:
    """Open a zarr array once per process (``token`` distinguishes array generations)."""
    return zarr.open_array(path, mode=mode)


class Staging:
    """Staging directory of one run (see the module docstring for the layout)."""

    def __init__(self, root: str | os.PathLike):
        self.root = os.fspath(root)

    # -- paths ---------------------------------------------------------------------
    @property
    def labels_path(self) -> str:
        return os.path.join(self.root, "labels.zarr")

    @property
    def tiles_dir(self) -> str:
        return os.path.join(self.root, "tiles")

    @property
    def info_path(self) -> str:
        return os.path.join(self.root, "staging.json")

    def tile_path(self, n: int) -> str:
        return os.path.join(self.tiles_dir, f"{n}.npz")

    # -- lifecycle -----------------------------------------------------------------
    def info(self) -> dict[str, Any] | None:
        try:
            with open(self.info_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def prepare(self, info: dict[str, Any], shape, chunks, dtype) -> bool:
        """Create the staging area, or reuse it when it belongs to the same run.

        Returns True when an existing staging of the same run is reused (a resume).
        """
        existing = self.info()
        if existing is not None and existing.get("run_key") == info.get("run_key") \
                and os.path.isdir(self.labels_path):
            return True
        if os.path.exists(self.root):
            shutil.rmtree(self.root)
        os.makedirs(self.tiles_dir)
        # a new id each time a staging area is created: caches of results derived from
        # this staging (Prefect task caches) name it, so they never outlive it
        info = {**info, "generation": uuid.uuid4().hex}
        zarr.create_array(store=self.labels_path, shape=tuple(shape), chunks=tuple(chunks),
                          dtype=dtype, fill_value=0)
        tmp = self.info_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(info, f, indent=1, default=str)
        os.replace(tmp, self.info_path)
        return False

    @property
    def generation(self) -> str | None:
        info = self.info()
        return info.get("generation") if info else None

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # -- per-tile side files ---------------------------------------------------------
    def finished_tiles(self) -> list[int]:
        try:
            names = os.listdir(self.tiles_dir)
        except FileNotFoundError:
            return []
        return sorted(int(n[:-4]) for n in names if n.endswith(".npz") and n[:-4].isdigit())

    def is_finished(self, n: int) -> bool:
        return os.path.exists(self.tile_path(n))

    def write_tile(self, n: int, record: dict[str, Any],
                   arrays: dict[str, np.ndarray] | None = None) -> None:
        """Write tile ``n``'s record and arrays atomically; this marks the tile finished."""
        arrays = arrays or {}
        meta = {"record": record, "arrays": {}}
        payload = {}
        for name, arr in arrays.items():
            arr = np.ascontiguousarray(arr)
            meta["arrays"][name] = {"shape": list(arr.shape), "dtype": arr.dtype.str}
            payload[name] = np.frombuffer(_CODEC.encode(arr), dtype=np.uint8)
        payload["__meta__"] = np.frombuffer(json.dumps(meta, default=_json_default).encode(),
                                            dtype=np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **payload)
        tmp = os.path.join(self.tiles_dir, f".{n}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
        os.replace(tmp, self.tile_path(n))

    def read_record(self, n: int) -> dict[str, Any]:
        return self.read_tile(n, arrays=False)[0]

    def read_tile(self, n: int, arrays: bool = True
                  ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        with np.load(self.tile_path(n)) as z:
            meta = json.loads(z["__meta__"].tobytes())
            out = {}
            if arrays:
                for name, spec in meta["arrays"].items():
                    raw = _CODEC.decode(z[name].tobytes())
                    out[name] = np.frombuffer(raw, dtype=np.dtype(spec["dtype"])).reshape(
                        spec["shape"])
        return meta["record"], out


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)

"""Tile functions of every kind that use blockbuster's DEFAULT identity (none defines
``cache_token()``), for the resume and identity tests.

Each labels ``tile > threshold`` and records each call as a file in ``calls_dir`` (calls
are counted across worker processes and driver processes). ``BB_TEST_DELAY`` (seconds,
read at call time from the environment, not part of the function's state) slows each
call down, so a driver can be killed mid-run.
"""

from __future__ import annotations

import functools
import os
import time
import uuid

import numpy as np
import scipy.ndimage as ndi

KINDS = ("object", "closure", "method", "partial")


def _record_call(calls_dir: str) -> None:
    with open(os.path.join(calls_dir, f"{os.getpid()}-{uuid.uuid4().hex}"), "w") as f:
        f.write("call")
    delay = float(os.environ.get("BB_TEST_DELAY", "0") or 0)
    if delay:
        time.sleep(delay)


def label_above(tile: np.ndarray, calls_dir: str, threshold: int) -> np.ndarray:
    _record_call(calls_dir)
    return ndi.label(tile > threshold)[0]


class Labeler:
    """A callable object (and, through ``run``, a bound method)."""

    def __init__(self, calls_dir: str, threshold: int):
        self.calls_dir = calls_dir
        self.threshold = threshold

    def __call__(self, tile):
        return label_above(tile, self.calls_dir, self.threshold)

    def run(self, tile):
        return label_above(tile, self.calls_dir, self.threshold)


def make_closure(calls_dir: str, threshold: int):
    def fn(tile):
        return label_above(tile, calls_dir, threshold)

    return fn


def make_fn(kind: str, calls_dir: str, threshold: int):
    """A tile function of ``kind`` (one of :data:`KINDS`)."""
    if kind == "object":
        return Labeler(calls_dir, threshold)
    if kind == "method":
        return Labeler(calls_dir, threshold).run
    if kind == "closure":
        return make_closure(calls_dir, threshold)
    if kind == "partial":
        return functools.partial(label_above, calls_dir=calls_dir, threshold=threshold)
    raise ValueError(kind)


def n_calls(calls_dir: str) -> int:
    return len(os.listdir(calls_dir))


def blob_image(shape=(120, 120), seed=3) -> np.ndarray:
    """Values 0..3 in smooth blobs: ``> 0`` and ``> 1`` give different objects."""
    rng = np.random.default_rng(seed)
    smooth = ndi.gaussian_filter(rng.random(shape), 3)
    q = np.quantile(smooth, [0.45, 0.6, 0.75])
    return np.digitize(smooth, q).astype(np.uint8)


def corrupt_a_staged_record(staging: str, wait: float = 60.0) -> int | None:
    """Flip one byte in the largest array of a staged record of another batch (the
    first finished tile with labels), waiting up to ``wait`` s for one; return the tile
    (None if none appeared). The record is left framed, so only its checksum tells."""
    import json
    import struct

    from blockbuster.io import Staging

    deadline = time.time() + wait
    while time.time() < deadline:
        st = Staging(staging)
        for tile in st.finished_tiles():
            if not st.read_record(tile).get("n_labels"):
                continue
            pack, pos = st._idx().find(tile)
            with open(pack, "r+b") as f:
                raw = f.read()
                _, hlen, _ = struct.unpack_from("<4sIQ", raw, pos)
                arrays = json.loads(raw[pos + 16 : pos + 16 + hlen])["arrays"]
                offset, size = max(arrays.values(), key=lambda spec: spec[1])[:2]
                at = pos + 16 + hlen + offset + size // 2
                f.seek(at)
                f.write(bytes([raw[at] ^ 0x10]))
            return tile
        time.sleep(0.05)
    return None


class CorruptsMidRun(Labeler):
    """Labels like :class:`Labeler`; its first call anywhere (claimed with an exclusive
    file) waits for another batch's record to be staged and flips a byte of it, so the
    run meets a bad record after it checked its staging: in the seam scan."""

    def __init__(self, calls_dir: str, threshold: int, staging: str, marker: str):
        super().__init__(calls_dir, threshold)
        self.staging = staging
        self.marker = marker

    def __call__(self, tile):
        out = super().__call__(tile)
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return out
        with os.fdopen(fd, "w") as f:
            f.write(str(corrupt_a_staged_record(self.staging)))
        return out

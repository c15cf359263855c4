"""Identities without a cluster: functions (in separate processes), inputs (stamps that
see a pixel rewrite in place), staging records (checksums, one record per tile)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import tifffile
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from blockbuster.core import fn_identity
from blockbuster.errors import StagingCorruptError, StagingCorruptWarning
from blockbuster.io import STAMP_ENV, Staging, open_image, open_path
from blockbuster.io._staging._local import _INDEXES, _PackIndex

TESTS = os.path.dirname(__file__)
ROOT = os.path.dirname(TESTS)

# -------------------------------------------------------------------------- functions
TOKENS = """
import json, sys
sys.path.insert(0, {tests!r})
from identity_fns import KINDS, make_fn
from blockbuster.core import fn_identity
print(json.dumps({{k: [fn_identity(make_fn(k, "/calls", t))[0] for t in (0, 1)] for k in KINDS}}))
"""


def _tokens_in_new_process() -> dict:
    env = {**os.environ, "PYTHONPATH": ROOT, "PYTHONHASHSEED": "random"}
    out = subprocess.run(
        [sys.executable, "-c", TOKENS.format(tests=TESTS)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_default_identity_is_the_same_in_every_process_and_sees_changed_state():
    # no cache_token anywhere: a callable object, a closure, a bound method, a partial
    a, b = _tokens_in_new_process(), _tokens_in_new_process()
    for kind in a:
        same, changed = a[kind]
        assert same is not None and changed is not None, kind
        assert same == b[kind][0], f"{kind}: token differs between processes"
        assert same != changed, f"{kind}: a changed threshold kept the token"
    assert len({a[k][0] for k in a}) == len(a)  # four different things


def test_closure_code_defaults_and_globals_are_part_of_the_identity():
    def make(k):
        def f(tile):
            return tile > k

        return f

    def g(tile):
        return tile > 1

    def h(tile, k=1):
        return tile > k

    def h2(tile, k=2):
        return tile > k

    ids = [fn_identity(x)[0] for x in (make(1), make(2), g, h, h2)]
    assert None not in ids and len(set(ids)) == 5
    ns = {}
    code = "import numpy as np\nT = {t}\ndef seg(tile):\n    return tile > T\n"
    exec(code.format(t=1), ns)  # no retrievable source: code and globals still count
    first = fn_identity(ns["seg"])[0]
    exec(code.format(t=2), ns)
    assert first is not None and fn_identity(ns["seg"])[0] != first


def test_cache_token_replaces_the_default_identity():
    class Model:
        def __init__(self, weights):
            self.weights = weights  # large state: not hashed

        def cache_token(self):
            return "model-v1"

        def __call__(self, tile):
            return tile

    assert fn_identity(Model(np.zeros(10)))[0] == fn_identity(Model(np.ones(10)))[0]


def test_unknown_identity_says_why_and_how_to_fix():
    import threading

    lock = threading.Lock()

    def seg(tile):
        with lock:
            return tile > 0

    token, why = fn_identity(seg)
    assert token is None
    assert "'lock'" in why and "cache_token()" in why


# ------------------------------------------------------------------------------ inputs
def _rewrite_in_place(path: str, payload: bytes) -> None:
    """Overwrite a file's bytes in place (same size) and set its mtime back."""
    st = os.stat(path)
    assert len(payload) == st.st_size
    time.sleep(0.01)
    with open(path, "r+b") as f:
        f.write(payload)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns


def _chunk_files(root: str) -> list[str]:
    meta = {"zarr.json", ".zarray", ".zattrs", ".zgroup"}
    return sorted(
        os.path.join(d, n) for d, _, names in os.walk(root) for n in names if n not in meta
    )


@pytest.mark.parametrize("layout", ["v2", "v3", "v3-sharded", "ome-zarr"])
def test_zarr_chunk_rewritten_in_place_changes_the_identity(tmp_path, layout, monkeypatch):
    path = str(tmp_path / "img.zarr")
    data = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32)
    kw = {"compressors": None}
    if layout == "v2":
        zarr.create_array(path, shape=data.shape, chunks=(16, 16), dtype="u2", zarr_format=2, **kw)
    elif layout == "v3":
        zarr.create_array(path, shape=data.shape, chunks=(16, 16), dtype="u2", **kw)
    elif layout == "v3-sharded":
        zarr.create_array(path, shape=data.shape, chunks=(8, 8), shards=(16, 16), dtype="u2", **kw)
    else:
        g = zarr.open_group(path, mode="w")
        g.create_array("0", shape=data.shape, chunks=(16, 16), dtype="u2", **kw)
        g.attrs["ome"] = {
            "version": "0.5",
            "multiscales": [
                {
                    "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
                    "datasets": [
                        {
                            "path": "0",
                            "coordinateTransformations": [{"type": "scale", "scale": [1, 1]}],
                        }
                    ],
                }
            ],
        }
    arr = zarr.open_array(path if layout != "ome-zarr" else os.path.join(path, "0"), mode="r+")
    arr[...] = data
    before = open_path(path).identity()
    assert open_path(path).identity() == before  # stable
    if layout == "ome-zarr":  # labels written into the image do not change its identity
        zarr.create_array(os.path.join(path, "labels", "cells"), shape=(4,), dtype="u1")
        assert open_path(path).identity() == before
    chunk = _chunk_files(path if layout != "ome-zarr" else os.path.join(path, "0"))[0]
    raw = bytearray(open(chunk, "rb").read())
    raw[-1] ^= 0xFF  # a pixel changes; metadata, file sizes and mtimes do not
    meta = {p: os.stat(p).st_mtime_ns for p in _chunk_files(path) + [path]}
    _rewrite_in_place(chunk, bytes(raw))
    assert {p: os.stat(p).st_mtime_ns for p in meta} == meta
    assert open_path(path).identity() != before
    # the opt-in cheap mode does not see it (its documented risk)
    monkeypatch.setenv(STAMP_ENV, "metadata")
    cheap = open_path(path).identity()
    _rewrite_in_place(chunk, bytes(raw[:-1] + bytes([raw[-1] ^ 0x0F])))
    assert open_path(path).identity() == cheap


def _count_pools(monkeypatch) -> list:
    """The thread pools the input stamp starts from now on (a list that grows)."""
    from concurrent.futures import ThreadPoolExecutor

    from blockbuster.io import _stamp

    pools: list = []

    class CountedPool(ThreadPoolExecutor):
        def __init__(self, *a, **k):
            pools.append(self)
            super().__init__(*a, **k)

    monkeypatch.setattr(_stamp, "ThreadPoolExecutor", CountedPool)
    return pools


def test_the_mount_table_decides_how_a_tree_is_scanned(tmp_path, monkeypatch):
    """On a local filesystem (this machine's tmp_path, as the mount table says) the
    tree is scanned in the calling thread even when its first entries are slow (a
    directory just written, a busy disk): a pool of threads is 2.5x slower there. On a
    network filesystem the pool starts at once; on an unknown one, speed decides."""
    from blockbuster.io import _stamp

    for i in range(3):
        (tmp_path / "a" / str(i)).mkdir(parents=True)
        (tmp_path / "a" / str(i) / "0").write_bytes(b"x")
    pools = _count_pools(monkeypatch)
    monkeypatch.setattr(_stamp, "SLOW_ENTRY_S", 0.0)  # every entry looks slow
    monkeypatch.setattr(_stamp, "_PROBE_ENTRIES", 0)
    kind = _stamp.filesystem_type(str(tmp_path))
    if kind not in _stamp.LOCAL_FS:
        pytest.skip(f"tmp_path is on {kind!r} here, not a local filesystem type")
    want = _stamp.tree_stamp(str(tmp_path / "a"))
    assert pools == []
    for kind, pooled in (("nfs4", 1), ("fuse.sshfs", 1), ("madeupfs", 1), (None, 1)):
        monkeypatch.setattr(_stamp, "filesystem_type", lambda path, k=kind: k)
        assert _stamp.tree_stamp(str(tmp_path / "a")) == want
        assert len(pools) == pooled, kind
        pools.clear()
    monkeypatch.setattr(_stamp, "SLOW_ENTRY_S", 1.0)  # unknown and fast: this thread
    monkeypatch.setattr(_stamp, "_PROBE_ENTRIES", 256)
    _stamp.tree_stamp(str(tmp_path / "a"))
    assert pools == []


@settings(max_examples=200, deadline=None)
@given(
    points=st.lists(
        st.lists(st.sampled_from(["a", "b", "ab", "c d", "e\\f"]), min_size=1, max_size=3),
        max_size=6,
    ),
    path=st.lists(st.sampled_from(["a", "b", "ab", "c d", "e\\f", "x"]), max_size=4),
)
def test_filesystem_type_is_the_longest_mount_holding_the_path(points, path):
    """The mount table's rule: the mount point that is the longest prefix (whole path
    components) of the path; names with spaces or backslashes are octal-escaped."""
    from blockbuster.io._stamp import filesystem_type

    mounts = ["/"] + ["/" + "/".join(p) for p in points]
    esc = [m.replace("\\", "\\134").replace(" ", "\\040") for m in mounts]
    table = "\n".join(
        f"{i + 20} 1 0:{i} / {e} rw,relatime shared:1 - fs{i} src rw" for i, e in enumerate(esc)
    )
    target = "/" + "/".join(path)
    holding = [
        (len(m), i)
        for i, m in enumerate(mounts)
        if target == m or target.startswith(m.rstrip("/") + "/")
    ]
    assert filesystem_type(target, table) == f"fs{max(holding)[1]}"


def test_the_stamp_is_the_same_scanned_here_or_by_threads(tmp_path, monkeypatch):
    """A tree is scanned in the calling thread while its entries are cheap (a local
    disk) and by a pool of threads when they are slow (a network filesystem): both give
    the same stamp, exclude the same folders and see the same change."""
    from blockbuster.io import _stamp

    root = tmp_path / "img.zarr"
    for i in range(6):
        (root / "c" / str(i)).mkdir(parents=True)
        for j in range(50):
            (root / "c" / str(i) / str(j)).write_bytes(bytes([i, j]) * (j + 1))
    (root / "zarr.json").write_text("{}")
    (root / "labels").mkdir()
    (root / "labels" / "zarr.json").write_text("{}")
    pools = _count_pools(monkeypatch)
    monkeypatch.setattr(_stamp, "_pooled", lambda root: None)  # decided by speed here

    def both():
        monkeypatch.setattr(_stamp, "SLOW_ENTRY_S", 1.0)  # nothing is slow: this thread
        here = _stamp.tree_stamp(str(root), exclude=("labels",))
        assert not pools
        monkeypatch.setattr(_stamp, "SLOW_ENTRY_S", 0.0)  # everything is: the pool
        monkeypatch.setattr(_stamp, "_PROBE_ENTRIES", 0)
        threads = _stamp.tree_stamp(str(root), exclude=("labels",))
        assert len(pools) == 1
        pools.clear()
        monkeypatch.setattr(_stamp, "_PROBE_ENTRIES", 256)
        return here, threads

    def oracle():  # the documented digest: xxh3-128 over the sorted lines, os.walk's files
        import xxhash

        rels = sorted(
            os.path.relpath(os.path.join(d, n), root).replace(os.sep, "/")
            for d, _, names in os.walk(root)
            for n in names
        )
        lines = []
        for rel in rels:
            if rel.startswith("labels/"):
                continue
            st = os.stat(root / rel)
            lines.append(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\n")
        return xxhash.xxh3_128("".join(lines).encode()).hexdigest()

    here, threads = both()
    assert here == threads
    assert here["digest"] == oracle()
    assert here["files"] == 301 and here["bytes"] == 2 + 6 * sum(2 * (j + 1) for j in range(50))
    (root / "labels" / "zarr.json").write_text('{"a": 1}')  # excluded: no change
    assert both()[0] == here
    os.remove(root / "c" / "3" / "7")
    after = both()
    assert after[0] == after[1] and after[0]["digest"] != here["digest"]
    assert after[0]["digest"] == oracle()


def test_tiff_rewritten_with_same_size_and_mtime_changes_the_identity(tmp_path):
    p = str(tmp_path / "a.tif")
    tifffile.imwrite(p, np.zeros((32, 32), np.uint8))
    before = open_path(p).identity()
    raw = bytearray(open(p, "rb").read())
    raw[-1] ^= 0x01  # the last pixel (uncompressed strip at the end)
    _rewrite_in_place(p, bytes(raw))
    assert open_path(p).identity() != before


def test_numpy_by_content_dask_by_graph_token():
    import dask.array as da

    a = np.arange(100, dtype=np.uint8).reshape(10, 10)
    assert open_image(a).identity() == open_image(a.copy()).identity()
    b = a.copy()
    b[3, 3] += 1
    assert open_image(b).identity() != open_image(a).identity()
    assert "unknown" not in open_image(a).identity()
    x = da.from_array(a, chunks=5)
    assert open_image(x).identity() == open_image(da.from_array(a.copy(), chunks=5)).identity()
    assert open_image(x).identity() != open_image(x + 1).identity()
    mem = zarr.create_array(zarr.storage.MemoryStore(), shape=(4, 4), dtype="u1")
    assert "unknown" in open_image(mem).identity()


# ----------------------------------------------------------------------------- staging
def _staged(tmp_path, n=4):
    st = Staging(str(tmp_path / "stg"))
    st.prepare({"run_key": "k"})
    with st:
        for t in range(n):
            st.write_tile(t, {"n_labels": t}, {"labels": np.full((8, 8), t, np.uint32)})
    return st


def _record_at(st: Staging, tile: int):
    path, pos = st._idx().find(tile)
    raw = open(path, "rb").read()
    magic, hlen, _ = struct.unpack_from("<4sIQ", raw, pos)
    meta = json.loads(raw[pos + 16 : pos + 16 + hlen])
    return path, pos, hlen, meta


def _flip(path: str, offset: int) -> None:
    raw = bytearray(open(path, "rb").read())
    raw[offset] ^= 0x01
    open(path, "wb").write(bytes(raw))


def test_flipped_payload_byte_is_never_read_and_verify_drops_the_record(tmp_path):
    st = _staged(tmp_path)
    path, pos, hlen, meta = _record_at(st, 2)
    _flip(path, pos + 16 + hlen + meta["arrays"]["labels"][0] + 3)
    with pytest.raises(StagingCorruptError, match="staged tile 2") as exc:
        Staging(st.root).read_tile(2)
    assert exc.value.tile == 2 and isinstance(exc.value, OSError)
    assert Staging(st.root).read_record(2) == {"n_labels": 2}  # the header is intact
    generation = st.generation
    with pytest.warns(StagingCorruptWarning, match="staged tile 2"):
        assert Staging(st.root).verify() == [2]
    fresh = Staging(st.root)
    assert fresh.finished_tiles() == [0, 1, 3]  # tile 2 is unfinished: recomputed
    assert fresh.generation != generation  # no cached stage result of the old records
    assert fresh.read_tile(3)[1]["labels"].max() == 3
    assert Staging(st.root).verify() == []  # nothing left to drop


def test_flipped_header_byte_drops_that_record_and_the_rest_of_its_pack(tmp_path):
    st = _staged(tmp_path)
    path, pos, hlen, meta = _record_at(st, 1)
    _flip(path, pos + 20)
    with pytest.raises(StagingCorruptError, match="its header"):
        Staging(st.root).read_tile(1)  # a reader that indexed it before
    _INDEXES.clear()  # a process that scans the pack now
    with pytest.warns(StagingCorruptWarning, match="fails its checksum"):
        assert Staging(st.root).finished_tiles() == [0]
    with pytest.warns(StagingCorruptWarning):
        Staging(st.root).verify()
    assert Staging(st.root).finished_tiles() == [0]  # tiles 1-3 are recomputed


def test_verify_on_many_packs_leaves_the_callers_warning_filters_alone(tmp_path):
    # verify checks packs on several threads; it once silenced its own scan with
    # warnings.catch_warnings in each thread, and overlapping exits left an "ignore"
    # filter installed, so later corruption warnings (a run's) were never shown (CI).
    for attempt in range(20):
        st = Staging(str(tmp_path / f"stg{attempt}"))
        st.prepare({"run_key": "k"})
        for t in range(8):  # one pack per writer
            with Staging(st.root) as w:
                w.write_tile(t, {"v": t}, {"labels": np.full(4, t, np.uint8)})
        for t in range(8):
            path, pos, hlen, meta = _record_at(st, t)
            _flip(path, pos + 20)  # every pack's only header
        _INDEXES.clear()
        before = list(warnings.filters)
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            Staging(st.root).verify()
            inner = list(warnings.filters)
        assert warnings.filters == before
        assert inner[0][0] == "always" and len(inner) == len(before) + 1
        assert sum(issubclass(w.category, StagingCorruptWarning) for w in rec) == 8


def test_one_authoritative_record_per_tile_the_first_complete_one(tmp_path):
    st = Staging(str(tmp_path / "stg"))
    st.prepare({"run_key": "k"})
    for value in (1, 2):  # tile 0 written twice (a batch run again), different labels
        with Staging(st.root) as w:
            w.write_tile(0, {"v": value}, {"labels": np.full(4, value, np.uint8)})
        time.sleep(0.002)
    packs = sorted(os.listdir(st.tiles_dir))
    assert len(packs) == 2
    # every reader, whatever order it finds the packs in, takes the first pack's record
    for order in (packs, packs[::-1]):
        idx = _PackIndex(st.tiles_dir)
        for name in order:
            idx._scan(os.path.join(st.tiles_dir, name), 0)
        assert idx.where[0][0].endswith(packs[0]), order
    _INDEXES.clear()
    assert Staging(st.root).read_tile(0)[0] == {"v": 1}


def test_pack_and_directory_are_fsynced_when_a_writer_closes(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc")
    st = Staging(str(tmp_path / "stg"))
    st.prepare({"run_key": "k"})
    monkeypatch.setattr(os, "fsync", spy)
    with st:
        st.write_tile(0, {}, {"a": np.zeros(3)})
        assert synced == []
    assert any(p.endswith(".pack") for p in synced) and st.tiles_dir in synced


def test_files_written_while_the_output_is_finished_are_fsynced_before_it_is_complete(
    tmp_path, monkeypatch
):
    """A run finishes its output (every file fsync-ed) while its pictures are drawn, then
    writes them into it: they, and their folder, are fsync-ed before the completion
    record is written, and the output's chunks are not fsync-ed a second time."""
    from blockbuster.io import OutputTarget

    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc")
    events = []
    real = os.fsync

    def spy(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real(fd)

    out = OutputTarget(str(tmp_path / "labels.zarr"))
    arr = out.create((8, 8), "uint32", (4, 4), {"run_key": "k"})
    arr[...] = 1
    monkeypatch.setattr(os, "fsync", spy)
    out.finish()
    chunks = [p for _, p in events if os.path.isfile(p) and "/c/" in p]
    assert len(chunks) == 4  # the whole output's chunk files, once
    events.clear()
    png = out.write_file("blockbuster-preview.png", b"\x89PNG...")
    real_record = OutputTarget.open

    def record_write(self, mode="r"):
        events.append(("record", mode))
        return real_record(self, mode)

    monkeypatch.setattr(OutputTarget, "open", record_write)
    out.mark_complete({"run_key": "k"})
    assert events.index(("fsync", png)) < events.index(("record", "r+")), events
    assert ("fsync", out.path) in events[: events.index(("record", "r+"))], events
    assert not [p for kind, p in events if kind == "fsync" and "/c/" in p]  # not again
    assert out.completed_run()["run_key"] == "k"

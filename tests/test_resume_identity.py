"""Resume and invalidation with the DEFAULT function identity, in real processes.

A driver process is killed with SIGKILL mid-run (its cluster with it); the same script's
call, run again, calls ``fn`` only on the tiles that did not finish, for a callable
object, a closure, a bound method and a ``functools.partial`` (none defines
``cache_token()``). Changing the function's state (the threshold it captured, holds as
an attribute or binds as an argument), or the input's pixels in place, recomputes every
tile and gives the oracle's labels for the new function / input. Calls are counted as
files written by each call, across all processes.
"""

from __future__ import annotations

import os
import textwrap
import time

import numpy as np
import pytest
import scipy.ndimage as ndi
import zarr
from conftest import same_partition
from faults import kill_driver_once_staged
from identity_fns import KINDS, CorruptsMidRun, blob_image, make_fn, n_calls

from blockbuster.api import tile_process
from blockbuster.errors import IdentityWarning, StagingCorruptWarning
from blockbuster.io import Staging

pytestmark = pytest.mark.usefixtures("client")
TESTS = os.path.dirname(__file__)
ROOT = os.path.dirname(TESTS)
TILE = (20, 20)
N_TILES = 36


@pytest.fixture
def setup(tmp_path):
    img = blob_image()
    path = str(tmp_path / "img.zarr")
    # uncompressed chunks: a pixel rewrite keeps every file's size
    zarr.create_array(store=path, shape=img.shape, chunks=TILE, dtype=img.dtype, compressors=None)[
        ...
    ] = img
    calls = tmp_path / "calls"
    calls.mkdir()
    return img, path, str(calls), str(tmp_path / "out.zarr"), str(tmp_path / "stg")


def oracle(img, threshold=0):
    return ndi.label(img > threshold)[0]


DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from identity_fns import make_fn
    from blockbuster import tile_process
    tile_process({path!r}, make_fn({kind!r}, {calls!r}, 0), tile_shape={tile!r},
                 write_to={out!r}, staging={stg!r})
""")


def _kill_driver_mid_run(tmp_path, kind, path, calls, out, stg) -> int:
    """Start the driver, SIGKILL it (and its cluster) once 8+ tiles are staged; return
    the number of finished tiles left in the staging."""
    from prefect.settings import PREFECT_API_URL

    script = tmp_path / f"driver-{kind}.py"
    script.write_text(
        DRIVER.format(tests=TESTS, path=path, kind=kind, calls=calls, tile=TILE, out=out, stg=stg)
    )
    env = {**os.environ, "PYTHONPATH": ROOT, "BB_TEST_DELAY": "0.3"}
    api = PREFECT_API_URL.value()
    if api:  # report to the session's test server: no temporary server to start
        env["PREFECT_API_URL"] = api
    finished = kill_driver_once_staged(script, env, stg, 8, poll=0.05)
    assert 8 <= finished < N_TILES
    return finished


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_killed_run_resumes_only_unfinished_tiles_then_changed_state_recomputes(
    setup, tmp_path, kind
):
    img, path, calls, out, stg = setup
    finished = _kill_driver_mid_run(tmp_path, kind, path, calls, out, stg)
    before = n_calls(calls)
    # the same call, in another process (this one): only the unfinished tiles run
    lab = tile_process(
        path, make_fn(kind, calls, 0), tile_shape=TILE, write_to=out, staging=stg, compute=True
    )
    assert n_calls(calls) - before == N_TILES - finished
    assert same_partition(lab, oracle(img, 0))
    # the same call again: already complete, nothing runs
    _, summary = tile_process(
        path, make_fn(kind, calls, 0), tile_shape=TILE, write_to=out, return_summary=True
    )
    assert summary.get("cached") is True and n_calls(calls) - before == N_TILES - finished
    # the threshold changed (captured value / attribute / bound argument): all recomputed
    before = n_calls(calls)
    lab = tile_process(
        path,
        make_fn(kind, calls, 1),
        tile_shape=TILE,
        write_to=out,
        staging=stg,
        compute=True,
        overwrite=True,
    )
    assert n_calls(calls) - before == N_TILES
    assert same_partition(lab, oracle(img, 1)) and not same_partition(lab, oracle(img, 0))


def test_zarr_v3_pixels_rewritten_in_place_are_recomputed(setup):
    img, path, calls, out, stg = setup
    fn = make_fn("object", calls, 0)
    lab = tile_process(path, fn, tile_shape=TILE, write_to=out, staging=stg, compute=True)
    assert same_partition(lab, oracle(img)) and n_calls(calls) == N_TILES
    # rewrite chunk (1, 1) in place: metadata untouched, same size, mtime set back
    chunk = os.path.join(path, "c", "1", "1")
    st = os.stat(chunk)
    meta = os.stat(os.path.join(path, "zarr.json")).st_mtime_ns
    new = img.copy()
    new[20:40, 20:40] = 3 - new[20:40, 20:40]  # other pixels, same dtype and shape
    time.sleep(0.01)
    with open(chunk, "r+b") as f:
        f.write(np.ascontiguousarray(new[20:40, 20:40]).tobytes())
    os.utime(chunk, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(chunk).st_size == st.st_size and os.stat(chunk).st_mtime_ns == st.st_mtime_ns
    assert os.stat(os.path.join(path, "zarr.json")).st_mtime_ns == meta
    np.testing.assert_array_equal(zarr.open_array(path)[...], new)
    lab, summary = tile_process(
        path,
        fn,
        tile_shape=TILE,
        write_to=out,
        staging=stg,
        compute=True,
        return_summary=True,
        overwrite=True,
    )
    assert not summary.get("cached")
    assert n_calls(calls) == 2 * N_TILES  # the old staging was not reused
    assert same_partition(lab, oracle(new)) and not same_partition(lab, oracle(img))


def test_flipped_byte_in_a_staging_record_is_detected_and_recomputed(setup):
    img, path, calls, out, stg = setup
    fn = make_fn("closure", calls, 0)
    tile_process(path, fn, tile_shape=TILE, write_to=out, staging=stg, keep_staging=True)
    assert n_calls(calls) == N_TILES
    st = Staging(stg)
    import json
    import struct

    pack, pos = st._idx().find(14)  # a tile with labels (and a non-empty payload)
    raw = bytearray(open(pack, "rb").read())
    _, hlen, _ = struct.unpack_from("<4sIQ", raw, pos)
    arrays = json.loads(raw[pos + 16 : pos + 16 + hlen])["arrays"]
    name, spec = max(arrays.items(), key=lambda kv: kv[1][1])
    assert spec[1] > 0
    raw[pos + 16 + hlen + spec[0] + spec[1] // 2] ^= 0x10
    open(pack, "wb").write(bytes(raw))
    # a run that reuses the staging (numbering changed: not "already complete")
    with pytest.warns(StagingCorruptWarning, match="staged tile 14"):
        lab = tile_process(
            path,
            fn,
            tile_shape=TILE,
            write_to=out,
            staging=stg,
            sequential_labels=True,
            compute=True,
            overwrite=True,
        )
    assert n_calls(calls) == N_TILES + 1  # that tile only
    assert same_partition(lab, oracle(img))
    assert np.array_equal(np.unique(lab[lab > 0]), np.arange(1, lab.max() + 1))


def test_a_record_corrupted_mid_run_is_recomputed_within_the_run(setup, tmp_path):
    # the staging is sound when the run checks it; a byte flips after that (here: the
    # first tile call flips one in another batch's record), and the seam scan meets it
    img, path, calls, out, stg = setup
    marker = str(tmp_path / "corrupted")
    fn = CorruptsMidRun(calls, 0, stg, marker)
    with pytest.warns(StagingCorruptWarning, match=r"staged tile \d+") as rec:
        lab = tile_process(path, fn, tile_shape=TILE, write_to=out, staging=stg, compute=True)
    tile = open(marker).read()
    assert tile != "None", "no record was staged in time to corrupt"
    assert any(f"staged tile {tile} " in str(w.message) for w in rec)
    assert n_calls(calls) == N_TILES + 1  # that tile once more, no other
    assert same_partition(lab, oracle(img))


def test_unknown_function_identity_warns_once_and_never_reuses(setup):
    img, path, calls, out, stg = setup
    fn = _Opaque(make_fn("partial", calls, 0))
    for _ in range(2):
        with pytest.warns(IdentityWarning) as rec:
            tile_process(path, fn, tile_shape=TILE, write_to=out, staging=stg, overwrite=True)
        ours = [w for w in rec if issubclass(w.category, IdentityWarning)]
        assert len(ours) == 1 and "'marker'" in str(ours[0].message)
        assert "cache_token()" in str(ours[0].message)
    assert n_calls(calls) == 2 * N_TILES  # neither "already complete" nor resumed


class _Opaque:
    """Holds a bare ``object()``: picklable, but with no deterministic token."""

    def __init__(self, inner):
        self.inner = inner
        self.marker = object()

    def __call__(self, tile):
        return self.inner(tile)

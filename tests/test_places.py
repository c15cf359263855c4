"""The path rules of blockbuster.io._places, drawn at random (hypothesis).

Paths are built from pieces a hostile or careless parameter would hold: ``..``, ``.``,
``::`` (fsspec chaining), URL schemes, symbolic links pointing inside and outside the
data roots, NUL bytes, very long names, empty pieces. For each one, what a deployment
does with an output path is run: parse it, resolve it under the roots, look at what is
there and whether it may be replaced. No accepted path may resolve outside the roots,
and a refused path must leave the disk exactly as it was (tests/_trees.py).
"""

from __future__ import annotations

import os

import pytest
from _trees import bytes_lost, log_refusal, tree_state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockbuster.deploy import check_allowed_path
from blockbuster.errors import BlockbusterError
from blockbuster.io import check_replaceable, is_within, parse_location

PIECES = [
    "..",
    ".",
    "",
    "a",
    "b.zarr",
    "labels",
    "in",  # a link to a folder inside the roots
    "out",  # a link to a folder outside the roots
    "loop",  # a link to itself
    "x::memory",
    "::",
    "s3:",
    "memory:",
    "n" * 300,
    "nul\x00byte",
    "~",
    "é",
]
PREFIXES = ["{root}/", "{root}", "", "/", "s3://", "file://{root}/", "gs://b/", "{base}/"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("places")
    root = base / "root"
    outside = base / "outside"
    (root / "a" / "b.zarr").mkdir(parents=True)
    (root / "a" / "b.zarr" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    (root / "keep.txt").write_text("keep")
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    for d in (root, root / "a"):
        os.symlink(root / "a", d / "in")
        os.symlink(outside, d / "out")
        os.symlink(d / "loop", d / "loop")
    return base, root


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    prefix=st.sampled_from(PREFIXES),
    pieces=st.lists(st.sampled_from(PIECES), min_size=0, max_size=6),
)
def test_no_accepted_path_leaves_the_roots_and_no_refused_path_touches_the_disk(
    world, prefix, pieces
):
    base, root = world
    value = prefix.format(root=root, base=base) + "/".join(pieces)
    before = tree_state(base)
    try:
        resolved = check_allowed_path(value, [str(root)], what="output")
        check_replaceable(resolved, overwrite=True, param="output")
    except (BlockbusterError, ValueError, TypeError, OSError) as exc:
        after = tree_state(base)
        log_refusal(
            {
                "case": "property: drawn output path",
                "refused": True,
                "error": f"{type(exc).__name__}: {exc}"[:300],
                "bytes_lost": bytes_lost(before, after),
            }
        )
        assert str(exc)  # a message, never an empty error
        assert after == before, f"refusing {value!r} changed the disk"
        return
    assert is_within(os.path.realpath(resolved), os.path.realpath(root)), (value, resolved)
    assert "\x00" not in value and "::" not in value
    assert tree_state(base) == before


@given(value=st.text(min_size=1, max_size=40))
def test_parse_location_never_returns_a_url_or_a_chain(value):
    try:
        p = parse_location(value, param="write_to")
    except (ValueError, TypeError):
        return
    s = os.fspath(p)
    assert os.path.isabs(s) and "::" not in s and "\x00" not in s
    assert "://" not in s or value.startswith("file://")


# ---------------------------------------------------------------------------------------
# URL prefixes as data roots (deployments on object stores)
# ---------------------------------------------------------------------------------------
URL_ROOTS = ("/data", "s3://lab/raw", "gs://other")
KEYS = ["raw", "rawdata", "a.zarr", "..", ".", "", "x?y", "x#y", "%2e%2e", "labels", "r a w"]


@given(
    scheme=st.sampled_from(["s3", "gs", "az"]),
    bucket=st.sampled_from(["lab", "other", "lab2"]),
    keys=st.lists(st.sampled_from(KEYS), max_size=5),
    slash=st.booleans(),
)
def test_no_accepted_url_lies_outside_a_url_root(scheme, bucket, keys, slash):
    url = f"{scheme}://{bucket}/" + "/".join(keys) + ("/" if slash else "")
    try:
        got = check_allowed_path(url, URL_ROOTS, what="output")
    except BlockbusterError:
        return  # refused: a check of strings only, nothing on any disk or store
    assert not any(c in got for c in "?#%")
    segments = got.split("://", 1)[1].split("/")
    assert not any(s in ("", ".", "..") for s in segments)
    assert (
        got == "gs://other"
        or got.startswith("gs://other/")
        or got == "s3://lab/raw"
        or (got.startswith("s3://lab/raw/"))
    )


def test_url_roots_are_parsed_from_the_environment_and_checked():
    from blockbuster.deploy import Settings
    from blockbuster.errors import PathNotAllowedError

    s = Settings.from_env({"BLOCKBUSTER_DATA_ROOTS": "/data:s3://lab/raw/:gs://other"})
    assert s.data_roots == ("/data", "s3://lab/raw", "gs://other")
    ok = check_allowed_path("s3://lab/raw/x/a.zarr/", s.data_roots, what="image")
    assert ok == "s3://lab/raw/x/a.zarr"
    for bad, why in [
        ("s3://lab/rawdata/a.zarr", "outside the data roots"),  # a prefix, not a folder
        ("s3://lab2/raw/a.zarr", "outside the data roots"),
        ("gs://lab/raw/a.zarr", "outside the data roots"),
        ("s3://lab/raw/../secret/a.zarr", "'..'"),
        ("s3://lab/raw//a.zarr", "empty"),
    ]:
        with pytest.raises(PathNotAllowedError, match=why):
            check_allowed_path(bad, s.data_roots, what="image")
    # a local root never admits a URL, a URL root never a local path
    with pytest.raises(PathNotAllowedError, match="outside the data roots"):
        check_allowed_path("s3://lab/a.zarr", ("/data",), what="image")
    with pytest.raises(PathNotAllowedError, match="outside the data roots"):
        check_allowed_path(os.path.join(os.getcwd(), "s3:", "lab", "raw"), s.data_roots, what="x")
    with pytest.raises(Exception, match="read-only"):
        Settings.from_env({"BLOCKBUSTER_DATA_ROOTS": "https://example.org/data"})
    assert issubclass(PathNotAllowedError, PermissionError)

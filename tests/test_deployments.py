"""Deployments: parameter models and validation, prefect.yaml, and end to end against a
real Prefect server.

The end-to-end tests start ``blockbuster serve`` in a background process that serves to
the session's Prefect server (a real server process on 127.0.0.1, conftest.py's harness)
and runs on the session's Dask cluster, drive it through the REST API and ``prefect event
emit``, and check the labels on disk. It is started in its own process group and stopped
(with everything it started) at the end, also when a test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import zarr
from _trees import bytes_lost, log_refusal, tree_state
from conftest import same_partition

from blockbuster.deploy import (
    Settings,
    check_allowed_path,
    default_output,
    prepare_segment,
    segment,
)
from blockbuster.errors import (
    InvalidParameterError,
    OutputExistsError,
    PathNotAllowedError,
    SegmenterNotFoundError,
    UnsupportedLocationError,
)
from blockbuster.synthetic import write_synthetic_zarr

REPO = Path(__file__).resolve().parents[1]
THRESHOLD = 0.3 * 65535  # above the synthetic background, below every nucleus
SEG = {"name": "threshold", "options": {"threshold": THRESHOLD}}
TILING = {"tile_shape": [32, 32]}


def _image(path, seed=0, shape=(64, 64)) -> str:
    return write_synthetic_zarr(str(path), shape, (32, 32), seed=seed)


def _expected(path) -> np.ndarray:
    img = zarr.open_array(str(path), mode="r")[...]
    return ndi.label(img > THRESHOLD)[0]


# ---------------------------------------------------------------------------------------
# parameter models and validation (no server)
# ---------------------------------------------------------------------------------------
def test_parameter_schema_titles_descriptions_and_dropdowns():
    from prefect.utilities.callables import parameter_schema

    s = parameter_schema(segment).model_dump_for_openapi()
    assert s["required"] == ["image"]
    for name, prop in s["properties"].items():
        assert prop.get("title") and prop.get("description"), name
    for model in ("SegmenterChoice", "TilingOptions"):
        for name, prop in s["definitions"][model]["properties"].items():
            assert prop.get("title") and prop.get("description"), (model, name)
    assert {"threshold", "watershed"} <= set(s["definitions"]["SegmenterName"]["enum"])
    assert s["definitions"]["MergeMode"]["enum"] == ["auto", "touch", "overlap"]


def test_prepare_refuses_unregistered_segmenter_and_options(tmp_path):
    img = _image(tmp_path / "a.zarr")
    st = Settings(data_roots=(str(tmp_path),))
    with pytest.raises(SegmenterNotFoundError, match="no segmenter named 'os.system'"):
        prepare_segment(img, {"name": "os.system"}, settings=st)
    with pytest.raises(SegmenterNotFoundError):
        prepare_segment(img, {"name": "blockbuster.segmenters:threshold"}, settings=st)
    with pytest.raises(InvalidParameterError, match="does not accept the option 'min_sise'"):
        prepare_segment(img, {"name": "threshold", "options": {"min_sise": 3}}, settings=st)
    with pytest.raises(InvalidParameterError, match="unknown field"):
        prepare_segment(img, {"name": "threshold", "factory": "os:system"}, settings=st)
    with pytest.raises(InvalidParameterError, match="tile_shape"):
        prepare_segment(img, SEG, tiling={"tile_shape": [32, 32, 32]}, settings=st)
    with pytest.raises(InvalidParameterError, match="needs overlap > 0"):
        prepare_segment(img, SEG, tiling={"merge": "overlap"}, settings=st)


def test_paths_must_resolve_under_the_data_roots(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    img_in = _image(root / "a.zarr")
    img_out = _image(outside / "b.zarr", seed=1)
    (root / "escape.zarr").symlink_to(outside / "b.zarr")
    st = Settings(data_roots=(str(root),))
    before = tree_state(tmp_path)  # every byte, both sides of the roots
    with pytest.raises(PathNotAllowedError, match="outside the data roots"):
        prepare_segment(img_out, SEG, settings=st)
    with pytest.raises(PathNotAllowedError, match="resolves to"):
        prepare_segment(str(root / "escape.zarr"), SEG, settings=st)  # symlink out
    with pytest.raises(PathNotAllowedError, match="outside the data roots"):
        prepare_segment(str(root / ".." / "outside" / "b.zarr"), SEG, settings=st)
    with pytest.raises(PathNotAllowedError, match="outside the data roots"):
        prepare_segment(img_in, SEG, output=str(outside / "labels.zarr"), settings=st)
    with pytest.raises(InvalidParameterError, match="absolute path"):
        prepare_segment("a.zarr", SEG, settings=st)
    with pytest.raises(PathNotAllowedError, match="no data roots are configured"):
        prepare_segment(img_in, SEG, settings=Settings())
    with pytest.raises(PathNotAllowedError, match="outside the data roots"):
        check_allowed_path("s3://bucket/a.zarr", [str(root)], what="image")  # no URL root
    # a root that is a prefix of another folder's name does not admit it
    (tmp_path / "data2").mkdir()
    before["data2"] = ("dir", 0)  # made by the test itself
    with pytest.raises(PathNotAllowedError):
        check_allowed_path(str(tmp_path / "data2" / "x"), [str(root)], what="image")
    # the command line (the user's own process) does not enforce roots
    req = prepare_segment(img_out, SEG, settings=st, enforce_roots=False)
    assert req.output == str(outside / "b.zarr.labels.zarr")
    # nothing was written, changed or removed by any refusal
    assert tree_state(tmp_path) == before


def test_outputs_never_replace_inputs_or_foreign_data(tmp_path):
    st = Settings(data_roots=(str(tmp_path),))
    img = _image(tmp_path / "a.zarr")
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    before = tree_state(tmp_path)
    with pytest.raises(InvalidParameterError, match="would replace the input"):
        prepare_segment(img, SEG, output=img, settings=st)
    with pytest.raises(InvalidParameterError, match="would replace the input"):
        prepare_segment(img, SEG, output=str(tmp_path), settings=st)
    with pytest.raises(InvalidParameterError, match="inside the input image"):
        prepare_segment(img, SEG, output=img + "/labels/x", settings=st)  # not OME-Zarr
    with pytest.raises(OutputExistsError, match="never replaces it"):
        prepare_segment(img, SEG, output=str(foreign), settings=st, overwrite=True)
    with pytest.raises(UnsupportedLocationError, match="::"):
        prepare_segment(img, SEG, output=str(tmp_path / "shared::memory"), settings=st)
    assert tree_state(tmp_path) == before  # the input and every other byte intact


def test_default_outputs(tmp_path):
    assert default_output("/d/a.ome.zarr", kind="ome-zarr") == "/d/a.ome.zarr/labels/segmentation"
    assert default_output("/d/a.zarr", kind="zarr") == "/d/a.zarr.labels.zarr"
    assert default_output("/d/s/b.ome.tif", kind="tiff") == "/d/s/b.ome.tif.labels.zarr"
    assert (
        default_output("/d/s/b.tif", kind="tiff", output_dir="/o", base_folder="/d")
        == "/o/s/b.tif.labels.zarr"
    )
    assert (
        default_output("/x/b.tif", kind="tiff", output_dir="/o", base_folder="/d")
        == "/o/b.tif.labels.zarr"
    )


def test_settings_from_environment():
    s = Settings.from_env(
        {
            "BLOCKBUSTER_DATA_ROOTS": os.pathsep.join(["/data", "/scratch"]),
            "BLOCKBUSTER_WATCH_FOLDER": "/data/in",
            "BLOCKBUSTER_WATCH_CRON": "0 2 * * *",
            "BLOCKBUSTER_WATCH_TIMEZONE": "Europe/Berlin",
            "BLOCKBUSTER_SETTLE_SECONDS": "60",
            "BLOCKBUSTER_SEGMENTER": "threshold",
            "BLOCKBUSTER_SEGMENTER_OPTIONS": '{"threshold": 1000}',
            "BLOCKBUSTER_SERVE_LIMIT": "none",
        }
    )
    assert s.data_roots == ("/data", "/scratch") and s.watch_folder == "/data/in"
    assert (s.watch_cron, s.watch_timezone, s.settle_seconds) == (
        "0 2 * * *",
        "Europe/Berlin",
        60.0,
    )
    assert s.segmenter_options == {"threshold": 1000} and s.serve_limit is None
    assert Settings.from_env({}).data_roots == ()
    for key, value in [
        ("WATCH_INTERVAL", "0"),
        ("SETTLE_SECONDS", "-1"),
        ("WATCH_CRON", "every night"),
        ("SERVE_LIMIT", "many"),
        ("DATA_ROOTS", "relative/path"),
        ("SEGMENTER_OPTIONS", "[1]"),
    ]:
        with pytest.raises(InvalidParameterError, match=f"BLOCKBUSTER_{key}="):
            Settings.from_env({f"BLOCKBUSTER_{key}": value})


def test_serve_checks_its_settings(tmp_path):
    from blockbuster.deploy import build_deployments, check_settings, watch_schedule

    with pytest.raises(PathNotAllowedError, match="BLOCKBUSTER_DATA_ROOTS is not set"):
        check_settings(Settings())
    with pytest.raises(PathNotAllowedError, match="outside the data roots"):
        check_settings(Settings(data_roots=(str(tmp_path / "d"),), watch_folder="/elsewhere"))
    with pytest.raises(SegmenterNotFoundError):
        check_settings(Settings(data_roots=(str(tmp_path),), segmenter="nope"))
    st = Settings(
        data_roots=(str(tmp_path),),
        watch_folder=str(tmp_path),
        watch_cron="0 2 * * *",
        watch_timezone="Europe/Berlin",
        segmenter="threshold",
        segmenter_options={"threshold": 5},
    )
    seg, watch = build_deployments(st)
    assert (seg.name, watch.name) == ("segment", "watch-acquisitions")
    assert seg.entrypoint == "blockbuster.deploy._segment.segment"
    assert seg.parameters["segmenter"] == {"name": "threshold", "options": {"threshold": 5}}
    assert seg.triggers[0].expect == {"blockbuster.acquisition.finished"}
    assert watch.parameters["folder"] == str(tmp_path)
    assert watch.schedules and "0 2 * * *" in repr(watch.schedules[0])
    assert watch_schedule(Settings(data_roots=(str(tmp_path),))) is None  # no folder


def test_prefect_yaml_is_valid_for_the_flows():
    """What `prefect deploy` checks: entrypoints load, parameters fit the schemas,
    triggers and schedules parse."""
    import jsonschema
    import yaml
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    cfg = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    deps = {d["name"]: d for d in cfg["deployments"]}
    assert set(deps) == {"segment", "watch-acquisitions"}
    for name, d in deps.items():
        flow = load_flow_from_entrypoint(d["entrypoint"])
        assert flow.name == name
        schema = parameter_schema(flow).model_dump_for_openapi()
        params = dict(d.get("parameters") or {})
        if name == "segment":
            params["image"] = "/data/x.zarr"
        jsonschema.validate(params, {**schema, "$defs": schema.get("definitions", {})})
        for t in d.get("triggers") or []:
            trig = DeploymentEventTrigger(**{k: v for k, v in t.items() if k != "type"})
            assert trig.expect == {"blockbuster.acquisition.finished"}
            assert trig.parameters == {"image": "{{ event.resource.id }}"}
        for s in d.get("schedules") or []:
            CronSchedule(cron=s["cron"], timezone=s.get("timezone"))
    assert deps["watch-acquisitions"]["schedules"]
    assert deps["segment"]["triggers"]


# ---------------------------------------------------------------------------------------
# end to end: a real Prefect server, `blockbuster serve`, the REST API, events
# ---------------------------------------------------------------------------------------
def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(d))
    return out


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    f = open(log, "wb")
    try:
        return subprocess.Popen(
            cmd,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=str(log.parent),
        )
    finally:
        f.close()


def _stop(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """Stop a process started by _start and everything in its process group."""
    pgid = proc.pid
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        deadline = time.time() + wait
        while time.time() < deadline:
            proc.poll()
            if proc.returncode is not None and not _group_members(pgid):
                return
            time.sleep(0.2)
    proc.wait(timeout=5)


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


@dataclass
class Stack:
    api: str
    env: dict
    base: Path
    data: Path
    watch: Path
    serve_log: Path
    client: object

    def request(self, method: str, url: str, **kw):
        """The REST API, retrying what Prefect's own client retries (a busy SQLite
        database answers 503)."""
        for attempt in range(12):
            r = self.client.request(method, url, **kw)
            if r.status_code not in (429, 502, 503):
                return r
            time.sleep(min(0.25 * 2**attempt, 4.0))
        return r

    def post(self, url: str, **kw):
        return self.request("POST", url, **kw)

    def get(self, url: str, **kw):
        return self.request("GET", url, **kw)

    def deployment(self, name: str) -> dict:
        r = self.post("/deployments/filter", json={"deployments": {"name": {"any_": [name]}}})
        r.raise_for_status()
        (d,) = [d for d in r.json() if d["name"] == name]
        return d

    def run(self, deployment: str, parameters: dict):
        d = self.deployment(deployment)
        return self.post(
            f"/deployments/{d['id']}/create_flow_run", json={"parameters": parameters}
        )

    def wait(self, run_id: str, timeout: float = 180.0) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            r = self.get(f"/flow_runs/{run_id}")
            r.raise_for_status()
            fr = r.json()
            if fr["state"] and fr["state"]["type"] in (
                "COMPLETED",
                "FAILED",
                "CRASHED",
                "CANCELLED",
            ):
                return fr
            time.sleep(1.0)
        raise AssertionError(
            f"flow run {run_id} did not finish in {timeout} s; serve log:\n"
            + _tail(self.serve_log)
        )

    def completed(self, run_id: str, timeout: float = 180.0) -> dict:
        fr = self.wait(run_id, timeout)
        assert fr["state"]["type"] == "COMPLETED", (
            f"flow run {fr['name']}: {fr['state']['type']} {fr['state'].get('message')}; "
            "serve log:\n" + _tail(self.serve_log)
        )
        return fr

    def flow_runs(self, flow_name: str) -> list[dict]:
        r = self.post(  # newest first: the session's server also holds other files' runs
            "/flow_runs/filter",
            json={
                "flows": {"name": {"any_": [flow_name]}},
                "sort": "EXPECTED_START_TIME_DESC",
                "limit": 200,
            },
        )
        r.raise_for_status()
        return r.json()

    def artifact_rows(self, flow_run_id: str, key: str) -> list[dict]:
        r = self.post(
            "/artifacts/filter",
            json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}, "key": {"any_": [key]}}},
        )
        r.raise_for_status()
        (a,) = r.json()
        data = a["data"]
        return json.loads(data) if isinstance(data, str) else data


def _blockbuster_cmd() -> list[str]:
    exe = shutil.which(
        "blockbuster",
        path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    )
    return [exe] if exe else [sys.executable, "-m", "blockbuster.cli"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, prefect_api_url, cluster_client):
    """`blockbuster serve` in its own process group, stopped (with all it started: the
    flow-run processes) at the end of the module. It serves to the session's Prefect
    server (the harness's: a real server process on 127.0.0.1 with the services an
    ephemeral server runs, the event triggers and their actions among them) and its runs
    compute on the session's Dask cluster: a server and a cluster of this module's own
    cost ~20 CPU s more and test nothing more (docs/testing.md, round 12)."""
    import httpx

    base = tmp_path_factory.mktemp("e2e")
    home, data = base / "prefect-home", base / "data"
    watch = data / "incoming"
    for d in (home, watch):
        d.mkdir(parents=True)
    api = prefect_api_url
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BLOCKBUSTER_"))}
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PYTHONUNBUFFERED": "1",
            "PREFECT_API_URL": api,
            "BLOCKBUSTER_DATA_ROOTS": str(data),
            "BLOCKBUSTER_WATCH_FOLDER": str(watch),
            # a schedule that never fires during the test; runs are started through the API
            "BLOCKBUSTER_WATCH_CRON": "0 3 1 1 *",
            "BLOCKBUSTER_WATCH_TIMEZONE": "UTC",
            "BLOCKBUSTER_SEGMENTER": "threshold",
            "BLOCKBUSTER_SEGMENTER_OPTIONS": json.dumps({"threshold": THRESHOLD}),
            "BLOCKBUSTER_SERVE_LIMIT": "6",
            # runs use one warm cluster (as on a facility cluster) instead of starting one each
            "BLOCKBUSTER_DASK_ADDRESS": cluster_client.scheduler.address,
        }
    )
    serve_log = base / "serve.log"
    procs: list[subprocess.Popen] = []
    client = httpx.Client(base_url=api, timeout=30)
    try:
        assert client.get("/health").status_code == 200
        serve = _start(_blockbuster_cmd() + ["serve"], env, serve_log)
        procs.append(serve)
        deadline = time.time() + 180
        while True:
            assert serve.poll() is None, "blockbuster serve exited:\n" + _tail(serve_log)
            r = client.post("/deployments/filter", json={})
            if r.status_code == 200 and {d["name"] for d in r.json()} >= {
                "segment",
                "watch-acquisitions",
            }:
                break
            assert time.time() < deadline, "deployments not served:\n" + _tail(serve_log)
            time.sleep(0.5)
        yield Stack(api, env, base, data, watch, serve_log, client)
    finally:
        client.close()
        for p in reversed(procs):
            _stop(p)
    left = {p.pid: _group_members(p.pid) for p in procs}
    assert not any(left.values()), f"processes left behind: {left}"


@pytest.fixture(scope="module")
def launched(stack):
    """Flow runs started at once (they run side by side): `segment` through the API, two
    refused ones, and one through the event trigger."""
    img = _image(stack.data / "api.zarr", seed=1)
    out = stack.data / "results" / "api-labels.zarr"
    api_run = stack.run(
        "segment", {"image": img, "segmenter": SEG, "tiling": TILING, "output": str(out)}
    )
    assert api_run.status_code == 201, api_run.text
    inside = _image(stack.data / "refuse.zarr", seed=5)
    outside = _image(stack.base / "outside.zarr", seed=6)
    trees = {"inside_tree": tree_state(inside), "outside_tree": tree_state(outside)}
    refused = [
        stack.run("segment", {"image": outside}),
        stack.run("segment", {"image": inside, "output": str(stack.base / "stolen.labels.zarr")}),
    ]
    for r in refused:
        assert r.status_code == 201, r.text
    cases = _unsafe_cases(stack, inside)
    # an acquisition system announces a finished acquisition in the watched folder
    e_img = _image(stack.watch / "e.zarr", seed=4)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefect",
            "event",
            "emit",
            "blockbuster.acquisition.finished",
            "--resource-id",
            e_img,
        ],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    return {
        "api": (api_run.json()["id"], img, out),
        "inside": inside,
        "outside": outside,
        **trees,
        "refused": [r.json()["id"] for r in refused],
        "event_image": e_img,
        "cases": cases,
    }


def _unsafe_cases(stack, inside: str) -> list[dict]:
    """Served runs of `segment` for each unsafe case of docs/security.md that a form
    can express, started at once; each with the error it must fail with and the trees
    that must keep every byte."""
    import tifffile

    d = stack.data
    notes = d / "notes"  # a folder of the user's that is not a zarr store
    notes.mkdir()
    (notes / "keep.txt").write_text("precious")
    evil = str(d / "evil.ome.zarr")  # an NGFF image whose dataset leaves it
    g = zarr.open_group(evil, mode="w")
    g.create_array("0", shape=(64, 64), chunks=(32, 32), dtype="u2")[...] = 1
    g.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
                "datasets": [
                    {
                        "path": "../outside.zarr",
                        "coordinateTransformations": [{"type": "scale", "scale": [1, 1]}],
                    }
                ],
            }
        ],
    }
    tif = d / "tif"
    tif.mkdir()
    plane = np.zeros((64, 64), np.uint16)
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?><OME xmlns='
        '"http://www.openmicroscopy.org/Schemas/OME/2016-06" UUID="urn:uuid:a">'
        '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint16" '
        'SizeX="64" SizeY="64" SizeZ="2" SizeC="1" SizeT="1"><Channel ID="Channel:0:0" '
        'SamplesPerPixel="1"/><TiffData IFD="0" PlaneCount="1" FirstZ="0"><UUID '
        'FileName="m.ome.tif">urn:uuid:a</UUID></TiffData><TiffData IFD="0" PlaneCount="1" '
        'FirstZ="1"><UUID FileName="../../outside.ome.tif">urn:uuid:b</UUID></TiffData>'
        "</Pixels></Image></OME>"
    )
    tifffile.imwrite(tif / "m.ome.tif", plane, description=xml, metadata=None)
    table = [
        # (parameters, error name, phrase, trees kept)
        ({"image": inside, "output": str(notes)}, "OutputExistsError", "not", [notes, inside]),
        (
            {"image": inside, "output": str(d / "results" / "x::memory")},
            "UnsupportedLocationError",
            "::",
            [inside],
        ),
        (
            {"image": inside, "output": os.path.join(inside, "labels.zarr")},
            "InvalidParameterError",
            "input",
            [inside],
        ),
        ({"image": evil}, "PathNotAllowedError", "leaves the store", [evil]),
        ({"image": str(tif / "m.ome.tif")}, "PathNotAllowedError", "outside the folder", [tif]),
    ]
    cases = []
    for params, error, phrase, keep in table:
        r = stack.run("segment", {"segmenter": SEG, "tiling": TILING, **params})
        assert r.status_code == 201, r.text
        cases.append(
            {
                "id": r.json()["id"],
                "params": params,
                "error": error,
                "phrase": phrase,
                "trees": {str(k): tree_state(k) for k in keep},
            }
        )
    return cases


@pytest.mark.slow
def test_served_deployments_schema_schedule_and_trigger(stack):
    seg = stack.deployment("segment")
    watch = stack.deployment("watch-acquisitions")
    assert seg["enforce_parameter_schema"] and watch["enforce_parameter_schema"]
    schema = seg["parameter_openapi_schema"]
    for name, prop in schema["properties"].items():
        assert prop.get("title") and prop.get("description"), name
    for model in ("SegmenterChoice", "TilingOptions"):
        for name, prop in schema["definitions"][model]["properties"].items():
            assert prop.get("title") and prop.get("description"), (model, name)
    assert "threshold" in schema["definitions"]["SegmenterName"]["enum"]
    assert seg["parameters"]["segmenter"] == SEG
    wschema = watch["parameter_openapi_schema"]
    for name, prop in wschema["properties"].items():
        assert prop.get("title") and prop.get("description"), name
    assert watch["parameters"]["folder"] == str(stack.watch)
    (sched,) = watch["schedules"]
    assert sched["schedule"]["cron"] == "0 3 1 1 *" and sched["active"]
    autos = stack.post("/automations/filter", json={}).json()
    (auto,) = [a for a in autos if a["actions"][0].get("deployment_id") == seg["id"]]
    assert auto["trigger"]["expect"] == ["blockbuster.acquisition.finished"]
    assert auto["actions"][0]["parameters"] == {"image": "{{ event.resource.id }}"}


@pytest.mark.slow
def test_served_segment_refuses_unregistered_segmenters(stack, launched):
    # refused by the server at flow-run creation: the name is not in the schema's enum
    r = stack.run(
        "segment", {"image": launched["inside"], "segmenter": {"name": "os.system", "options": {}}}
    )
    assert r.status_code in (409, 422), r.text
    assert "os.system" in r.text and "is not one of" in r.text


@pytest.mark.slow
def test_served_segment_refuses_paths_outside_the_data_roots(stack, launched):
    for run_id in launched["refused"]:
        fr = stack.wait(run_id)
        assert fr["state"]["type"] == "FAILED", fr["state"]
        assert "PathNotAllowedError" in fr["state"]["message"]
        assert "outside the data roots" in fr["state"]["message"]
    assert not (stack.base / "outside.zarr.labels.zarr").exists()
    assert not (stack.base / "stolen.labels.zarr").exists()
    assert not (stack.data / "refuse.zarr.labels.zarr").exists()
    # the refused runs left every byte of both images as it was
    assert tree_state(launched["inside"]) == launched["inside_tree"]
    assert tree_state(launched["outside"]) == launched["outside_tree"]


@pytest.mark.slow
def test_served_segment_refuses_each_unsafe_case_and_keeps_every_byte(stack, launched):
    wrong = []
    for case in launched["cases"]:
        fr = stack.wait(case["id"])
        msg = fr["state"]["message"] or ""
        refused = (
            fr["state"]["type"] == "FAILED" and case["error"] in msg and case["phrase"] in msg
        )
        if not refused:
            wrong.append((case["params"], fr["state"]["type"], msg))
        lost = 0
        for tree, before in case["trees"].items():
            after = tree_state(tree)
            lost += bytes_lost(before, after)
            if after != before:
                wrong.append((case["params"], "bytes changed", tree))
        log_refusal(
            {
                "case": "served: " + case["error"] + " " + case["phrase"],
                "refused": refused,
                "error": msg[:300],
                "bytes_lost": lost,
            }
        )
    assert not wrong, wrong


@pytest.mark.slow
def test_served_segment_through_the_api(stack, launched):
    run_id, img, out = launched["api"]
    stack.completed(run_id)
    lab = zarr.open_array(str(out), mode="r")
    assert lab.attrs["blockbuster"]["complete"] is True
    assert same_partition(lab[...], _expected(img))


def _event_run(stack, image: str) -> dict:
    deadline = time.time() + 180
    while time.time() < deadline:
        run = next(
            (f for f in stack.flow_runs("segment") if f["parameters"].get("image") == image), None
        )
        if run is not None:
            return stack.completed(run["id"])
        time.sleep(1.0)
    raise AssertionError("the event did not start a segment run:\n" + _tail(stack.serve_log))


@pytest.mark.slow
def test_served_segment_runs_on_the_acquisition_finished_event(stack, launched):
    e_img = launched["event_image"]
    _event_run(stack, e_img)
    e_out = stack.watch / "e.zarr.labels.zarr"  # the default output: next to it
    assert same_partition(zarr.open_array(str(e_out), mode="r")[...], _expected(e_img))


def _touch_tree(path: Path, t: float) -> None:
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            os.utime(os.path.join(root, n), (t, t))
    os.utime(path, (t, t))


@pytest.mark.slow
def test_served_watch_acquisitions_segments_each_finished_acquisition_once(stack, launched):
    w = stack.watch
    e_img = launched["event_image"]
    _event_run(stack, e_img)  # e is segmented (by the event trigger)
    e_out = w / "e.zarr.labels.zarr"
    e_stamp = (e_out / "zarr.json").stat().st_mtime_ns
    # c finished (quiet for an hour), d still being written
    c_img = _image(w / "sub" / "c.zarr", seed=2)
    _touch_tree(Path(c_img), time.time() - 3600)
    d_img = _image(w / "d.zarr", seed=3)
    # d looks old too: only the writer below keeps it unfinished (not its creation now)
    _touch_tree(Path(d_img), time.time() - 3600)
    stop = threading.Event()

    def writer():  # the microscope keeps writing d
        arr = zarr.open_array(d_img, mode="r+")
        i = 0
        while not stop.is_set():
            arr[0, i % 64] = i
            i += 1
            stop.wait(0.5)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        # two scans at the same time: c is segmented exactly once
        params = {"folder": str(w), "settle_seconds": 30, "tiling": TILING}
        scans = [stack.run("watch-acquisitions", params) for _ in range(2)]
        for r in scans:
            assert r.status_code == 201, r.text
        rows = {}
        for r in scans:
            fr = stack.completed(r.json()["id"])
            rows[fr["id"]] = {
                Path(x["acquisition"]).name: x["status"]
                for x in stack.artifact_rows(fr["id"], "watch-acquisitions")
            }
        for decided in rows.values():
            assert decided["d.zarr"] == "unfinished"
            assert decided["e.zarr"] == "already-segmented"
            assert decided["c.zarr"] in ("segmented", "busy", "already-segmented")
        assert [d["c.zarr"] for d in rows.values()].count("segmented") == 1, rows

        c_out = w / "sub" / "c.zarr.labels.zarr"
        assert same_partition(zarr.open_array(str(c_out), mode="r")[...], _expected(c_img))
        assert not (w / "d.zarr.labels.zarr").exists()
        assert (e_out / "zarr.json").stat().st_mtime_ns == e_stamp

        def pipeline_runs(name: str) -> int:  # tile-process subflows that wrote `name`
            return sum(
                1
                for f in stack.flow_runs("tile-process")
                if f["parameters"].get("job", {}).get("output", "").endswith(name)
            )

        assert pipeline_runs("c.zarr.labels.zarr") == 1
        assert pipeline_runs("e.zarr.labels.zarr") == 1
        n_segment = len(stack.flow_runs("segment"))

        # a later scan processes nothing
        r = stack.run("watch-acquisitions", params)
        fr = stack.completed(r.json()["id"])
        decided = {
            Path(x["acquisition"]).name: x["status"]
            for x in stack.artifact_rows(fr["id"], "watch-acquisitions")
        }
        assert decided == {
            "c.zarr": "already-segmented",
            "d.zarr": "unfinished",
            "e.zarr": "already-segmented",
        }
        assert len(stack.flow_runs("segment")) == n_segment
        assert pipeline_runs("c.zarr.labels.zarr") == 1
    finally:
        stop.set()
        t.join(5)

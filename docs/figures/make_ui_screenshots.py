"""Screenshots of the Prefect UI for docs/ui.md, taken with the system's headless Chromium.

Needs a running server (``blockbuster up``) and the deployments served to it
(``BLOCKBUSTER_DATA_ROOTS=... blockbuster serve``, in another shell). Runs one job that
reports to that server (a synthetic nuclei image, watershed, 16 tiles with a halo, the
right-hand quarter empty and skipped), then photographs the deployment's run form,
the flow run, and its two pictures.

Usage: ``python docs/figures/make_ui_screenshots.py`` (same ``PREFECT_HOME`` as ``up``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests"))


def run_job() -> dict:
    import zarr

    from blockbuster import tile_process
    from blockbuster.segmenters import get_segmenter
    from blockbuster.synthetic import synthetic_nuclei

    image, _ = synthetic_nuclei((1024, 1024), seed=11, density=0.3)
    image[:, 768:] = 0  # an empty quarter: skipped tiles
    work = tempfile.mkdtemp(prefix="blockbuster-ui-")
    path = os.path.join(work, "nuclei.zarr")
    zarr.create_array(store=path, data=image, chunks=(256, 256))
    from skimage.filters import threshold_otsu

    thr = float(threshold_otsu(image[:, :768]))
    fn = get_segmenter("watershed", threshold=thr, smooth_sigma=1.0, min_distance=6, min_size=20)
    _, summary = tile_process(
        path,
        fn,
        tile_shape=(256, 256),
        overlap=16,
        skip_empty=True,
        write_to=os.path.join(work, "labels.zarr"),
        return_summary=True,
    )
    return summary


def main() -> None:
    import httpx
    from browser import browser

    from blockbuster.tasks import local_server

    state = local_server()
    if state is None:
        sys.exit("no local server: run `blockbuster up` first (same PREFECT_HOME)")
    ui, api = state["ui"], state["url"]
    summary = run_job()
    run_id = summary["flow_run_id"]
    c = httpx.Client(base_url=api, timeout=30)
    deps = {d["name"]: d for d in c.post("/deployments/filter", json={}).json()}
    if "segment" not in deps:
        sys.exit("no `segment` deployment: run `blockbuster serve` against this server")
    time.sleep(2)  # the last artifacts are sent just after the call returns
    arts = {
        a["key"]: a
        for a in c.post(
            "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}
        ).json()
    }
    images_loaded = (
        "[...document.images].filter(i => i.src.startsWith('data:image/png')"
        " && i.complete && i.naturalWidth > 0).length"
    )
    with browser(1400, 1000) as b:
        b.open(f"{ui}/deployments/deployment/{deps['segment']['id']}/run")
        b.wait_for("document.body.innerText", lambda t: bool(t) and "Input image" in t, 90)
        time.sleep(1.5)
        b.screenshot(os.path.join(HERE, "ui-deployment-form.png"))
        b.open(f"{ui}/runs/flow-run/{run_id}")
        b.wait_for("document.body.innerText", lambda t: bool(t) and "segmented" in t, 90)
        time.sleep(3)
        b.screenshot(os.path.join(HERE, "ui-run.png"))
        for key, name in (
            ("blockbuster-preview", "ui-preview.png"),
            ("blockbuster-tile-map", "ui-tile-map.png"),
        ):
            b.open(f"{ui}/artifacts/artifact/{arts[key]['id']}")
            b.wait_for(images_loaded, lambda n: bool(n), 90)
            time.sleep(1)
            b.screenshot(os.path.join(HERE, name))
    for name in ("ui-deployment-form.png", "ui-run.png", "ui-preview.png", "ui-tile-map.png"):
        print("wrote", os.path.relpath(os.path.join(HERE, name)))


if __name__ == "__main__":
    main()

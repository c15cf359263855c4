"""The implementations of the command-line subcommands (``run``, ``merge``,
``estimate-empty``, ``info``, ``demo``, ``serve``): each takes the parsed arguments,
prints its result and returns an exit code; the flows are imported only when run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ._errors import EXIT_OK, CommandError, UsageError

__all__: list[str] = []


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=_json_default))


def _json_default(o: Any):
    try:
        import numpy as np

        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, np.generic):
            return o.item()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, tuple):
        return list(o)
    return str(o)


def _cmd_run(a: argparse.Namespace) -> int:
    from blockbuster.deploy import prepare_segment, run_segment

    options = dict(a.option)
    tiling = {
        "tile_shape": None if a.tile_shape == "auto" else list(a.tile_shape),
        "overlap": list(a.overlap) if isinstance(a.overlap, tuple) else a.overlap,
        "merge": a.merge,
        "connectivity": a.connectivity,
        "iou_threshold": a.iou_threshold,
        "skip_empty": a.skip_empty,
        "empty_threshold": a.empty_threshold,
        "sequential_labels": a.sequential_labels,
        "use_gpu": a.use_gpu,
    }
    req = prepare_segment(
        a.image,
        {"name": a.segmenter, "options": options},
        a.write_to,
        tiling,
        channel_axis=a.channel_axis,
        level=a.level,
        overwrite=a.overwrite,
        enforce_roots=False,
    )
    res = run_segment(req, progress=a.progress)
    if a.json:
        _print_json(res)
    elif res["status"] == "segmented":
        print(
            f"segmented {res['image']}: {res['labels']} objects, {res['n_tiles']} tiles "
            f"of {'x'.join(map(str, res['tile_shape'] or []))}, {res['seconds']:.1f} s "
            f"-> {res['output']}"
        )
        _print_pictures(res.get("pictures"))
    elif res["status"] == "already-segmented":
        print(f"{res['output']} is already complete; nothing to do (--overwrite replaces it)")
    if res["status"] == "busy":
        holder = res.get("held_by") or {}
        raise CommandError(
            f"{res['output']} is being written by another run "
            f"(host {holder.get('host', '?')}, pid {holder.get('pid', '?')})"
        )
    return EXIT_OK


def _cmd_merge(a: argparse.Namespace) -> int:
    from blockbuster.api import merge_tile_labels

    if not os.path.exists(a.labels):
        from blockbuster.errors import InputNotFoundError

        raise InputNotFoundError(f"labels {a.labels!r} do not exist")
    ts = None if a.tile_shape in (None, "auto") else a.tile_shape
    _, summary = merge_tile_labels(
        a.labels,
        input_component=a.component,
        tile_shape=ts,
        write_to=a.write_to,
        connectivity=a.connectivity,
        sequential_labels=a.sequential_labels,
        overwrite=a.overwrite,
        progress=a.progress,
        return_summary=True,
    )
    if a.json:
        _print_json({k: v for k, v in summary.items() if k not in ("tiles", "seams")})
    else:
        print(
            f"merged {summary.get('n_tiles')} tiles: {summary.get('labels_before_merge')} "
            f"per-tile labels -> {summary.get('labels_after_merge')} -> "
            f"{summary.get('output')}"
        )
        _print_pictures(summary.get("pictures"))
    return EXIT_OK


def _print_pictures(pictures: dict | None) -> None:
    pictures = pictures or {}
    files = pictures.get("files") or {}
    if files.get("preview"):
        print(f"preview        {files['preview']} ({pictures.get('preview_view', '')})")
    if files.get("tile_map"):
        print(f"tile map       {files['tile_map']}")
    from blockbuster.tasks import local_server

    state = local_server()
    if state is not None:
        print(f"Prefect UI     {state['ui']}/runs (the run and its pictures)")


def _cmd_up(a: argparse.Namespace) -> int:
    from blockbuster.tasks import start_local_server

    if os.environ.get("PREFECT_API_URL"):
        print(
            f"note: PREFECT_API_URL is set ({os.environ['PREFECT_API_URL']}): runs in this "
            "shell report there, not to the server started here",
            file=sys.stderr,
        )
    state = start_local_server(port=a.port, timeout=a.timeout)
    word = "already up" if state.get("already") else "up"
    print(f"Prefect UI {word} at {state['ui']} (pid {state['pid']}, log {state['log']})")
    print("runs on this machine report to it; `blockbuster down` stops it")
    return EXIT_OK


def _cmd_down(a: argparse.Namespace) -> int:
    from blockbuster.tasks import stop_local_server

    state = stop_local_server()
    if state is None:
        print("no local Prefect server was running (`blockbuster up` starts one)")
    else:
        print(f"stopped the Prefect server at {state['ui']} (pid {state['pid']})")
    return EXIT_OK


def _cmd_estimate_empty(a: argparse.Namespace) -> int:
    from blockbuster.api import estimate_empty_tiles

    if a.tile_shape == "auto":
        raise UsageError("estimate-empty needs an explicit --tile-shape, e.g. 512,512")
    r = estimate_empty_tiles(
        a.image, a.tile_shape, threshold=a.threshold, channel_axis=a.channel_axis, level=a.level
    )
    if a.json:
        _print_json({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in r.items()})
        return EXIT_OK
    print(f"threshold      {r['threshold']:g} ({r['threshold_method']})")
    print(
        f"tiles          {r['n_tiles']} of {tuple(r['tile_shape'])}, grid {tuple(r['grid_shape'])}"
    )
    print(f"empty          {r['n_empty']} ({100 * r['empty_fraction']:.1f} %)")
    empty = r["empty"]
    if empty.ndim == 2 and empty.shape[1] <= 100 and empty.shape[0] <= 60:
        print("map            # has signal, . empty")
        for row in empty:
            print("               " + "".join("." if v else "#" for v in row))
    print(f"use            blockbuster run ... --skip-empty --empty-threshold {r['threshold']:g}")
    return EXIT_OK


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)  # pragma: no cover


def _cmd_info(a: argparse.Namespace) -> int:
    from blockbuster import __version__
    from blockbuster.cluster import allocation, gpu_info
    from blockbuster.deploy import get_settings
    from blockbuster.segmenters import available_segmenters, get_segmenter

    out: dict[str, Any] = {"blockbuster": __version__}
    if a.image is None:
        import prefect

        alloc = allocation()
        settings = get_settings()
        out.update(
            {
                "prefect": prefect.__version__,
                "cpus": alloc["cpus"],
                "memory_bytes": alloc["memory_bytes"],
                "allocation_source": alloc["source"],
                "gpus": gpu_info(),
                "segmenters": list(available_segmenters()),
                "settings": settings.model_dump(),
                "prefect_api_url": os.environ.get("PREFECT_API_URL") or None,
                "local_ui": _local_ui(),
            }
        )
        if a.json:
            _print_json(out)
            return EXIT_OK
        print(f"blockbuster    {__version__} (prefect {prefect.__version__})")
        print(
            f"machine        {alloc['cpus']} CPUs, {_fmt_bytes(alloc['memory_bytes'])} "
            f"available ({', '.join(alloc['source'])})"
        )
        gpus = out["gpus"]
        print(
            "GPUs           "
            + (
                ", ".join(
                    f"{g['index']}: {g['name']} {_fmt_bytes(g['memory_free'])} free" for g in gpus
                )
                or "none visible"
            )
        )
        print(f"segmenters     {', '.join(out['segmenters'])}")
        print(f"data roots     {os.pathsep.join(settings.data_roots) or '(not set)'}")
        print(f"watch folder   {settings.watch_folder or '(not set)'}")
        ui = out["local_ui"]
        print(
            "local UI       "
            + (
                f"up at {ui['ui']} (pid {ui['pid']}; `blockbuster down` stops it)"
                if ui
                else "not running (`blockbuster up` starts one)"
            )
        )
        api = out["prefect_api_url"] or (ui["url"] if ui else None)
        print(f"Prefect API    {api or '(a temporary server per process)'}")
        return EXIT_OK

    from blockbuster.api import choose_tile_shape
    from blockbuster.io import describe, open_image, open_path

    src = open_image(a.image, channel_axis=a.channel_axis, level=a.level)
    stored = open_path(a.image, level=a.level)
    fn = None
    if a.segmenter:
        fn = get_segmenter(a.segmenter, **dict(a.option))
    elif a.option:
        raise UsageError("--option needs --segmenter")
    ts, why = choose_tile_shape(src, fn, a.overlap, a.use_gpu)
    n_tiles = 1
    for s, t in zip(src.spatial_shape, ts):
        n_tiles *= -(-s // t)
    out.update(
        {
            "image": describe(stored),
            "kind": stored.kind,
            "shape": list(src.shape),
            "dtype": str(src.dtype),
            "chunks": list(stored.chunks),
            "channel_axis": src.channel_axis,
            "levels": [list(lv) for lv in stored.levels],
            "scale": stored.scale,
            "segmenter": a.segmenter,
            "auto_tile_shape": list(ts),
            "auto_tile_shape_reason": why,
            "n_tiles": n_tiles,
        }
    )
    if a.json:
        _print_json(out)
        return EXIT_OK
    print(f"image          {out['image']}")
    if len(stored.levels) > 1:
        print(f"levels         {', '.join('x'.join(map(str, lv)) for lv in stored.levels)}")
    print(
        f"auto tiles     {'x'.join(map(str, ts))} -> {n_tiles} tiles"
        + (f" for {a.segmenter}" if a.segmenter else "")
    )
    print(f"               {why}")
    return EXIT_OK


def _local_ui() -> dict[str, Any] | None:
    from blockbuster.tasks import local_server

    state = local_server()
    return {k: state[k] for k in ("ui", "url", "pid")} if state else None


def _cmd_demo(a: argparse.Namespace) -> int:
    try:
        from ._demo import run_demo
    except ImportError as exc:
        raise CommandError(f"the demo is not available in this installation ({exc})") from exc
    s = run_demo(
        a.workdir, shape=(a.size, a.size), tile_shape=(a.tile, a.tile), progress=not a.no_progress
    )
    print("blockbuster demo")
    print(f"  image       {s.get('image_path')}")
    print(
        f"  tiles       {s.get('n_tiles')} of {s.get('tile_shape')}, overlap "
        f"{s.get('overlap')}, merge {s.get('merge')}"
    )
    print(
        f"  labels      {s.get('labels_before_merge')} per tile -> "
        f"{s.get('labels_after_merge')} after the merge"
    )
    if s.get("f1") is not None:
        print(f"  F1          {s['f1']:.3f} against the known nuclei (IoU 0.5)")
    if s.get("wall_seconds") is not None:
        print(f"  wall time   {s['wall_seconds']:.1f} s")
    print(f"  output      {s.get('output')}")
    return EXIT_OK


def _cmd_serve(a: argparse.Namespace) -> int:
    from blockbuster.deploy import describe_deployments, get_settings

    settings = get_settings()
    if a.limit is not None and a.limit < 1:
        raise UsageError(f"--limit {a.limit} must be >= 1")
    text = describe_deployments(settings)
    if a.check:
        print(text)
        return EXIT_OK
    for line in text.splitlines():
        if line.startswith("warning:"):
            print(line, file=sys.stderr)
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    from blockbuster.tasks import local_server

    state = local_server()
    if state is not None and not get_current_settings().api.url:
        # `blockbuster up`'s server: in the environment too, for the flow-run subprocesses
        os.environ["PREFECT_API_URL"] = state["url"]
        with temporary_settings({PREFECT_API_URL: state["url"]}):
            return _serve(settings, a, state["url"])
    return _serve(settings, a, PREFECT_API_URL.value())


def _serve(settings, a: argparse.Namespace, url: str | None) -> int:
    from blockbuster.deploy import serve

    if not url:
        print(
            "warning: PREFECT_API_URL is not set: serving on a temporary local Prefect "
            "server that stops with this process (docs/deployments.md)",
            file=sys.stderr,
        )
    try:
        serve(settings, limit=a.limit if a.limit is not None else settings.serve_limit)
    except Exception as exc:
        import httpx

        if isinstance(exc, httpx.HTTPError) and not isinstance(exc, httpx.HTTPStatusError):
            raise CommandError(
                f"cannot reach the Prefect API at {url}: {exc}; start it "
                "(`prefect server start`) or fix PREFECT_API_URL"
            ) from exc
        raise
    return EXIT_OK

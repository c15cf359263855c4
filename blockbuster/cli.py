"""The command line: ``blockbuster run|merge|estimate-empty|info|demo|serve``.

Exit codes: 0 success; 1 the work failed (a tile function raised, the cluster broke, ...);
2 bad usage or input (unknown option, missing or unreadable image, unregistered
segmenter, invalid parameter, path refused). Errors are one line on stderr, prefixed
``blockbuster: error:``; ``--debug`` adds the traceback (and Prefect's logs).

Examples
--------
::

    blockbuster run image.zarr --segmenter watershed --option threshold=1200 \\
        --overlap 16 --write-to labels.zarr --progress
    blockbuster estimate-empty image.zarr --tile-shape 512,512
    blockbuster info image.zarr --segmenter cellpose
    blockbuster serve
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Sequence

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
PROG = "blockbuster"


class UsageError(Exception):
    """Bad command-line usage (exit code 2)."""


class CommandError(Exception):
    """The work failed, with a message that says it all (exit code 1)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line (exit code 2)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


# ---------------------------------------------------------------------------------------
# value parsers
# ---------------------------------------------------------------------------------------
def _ints(text: str, what: str) -> tuple[int, ...]:
    parts = [p for p in text.replace("x", ",").replace(" ", ",").split(",") if p]
    try:
        vals = tuple(int(p) for p in parts)
    except ValueError:
        vals = ()
    if not vals:
        raise argparse.ArgumentTypeError(
            f"{what} {text!r} must be integers separated by commas, e.g. 512,512")
    return vals


def _tile_shape(text: str):
    if text.strip().lower() == "auto":
        return "auto"
    return _ints(text, "tile shape")


def _overlap(text: str):
    v = _ints(text, "overlap")
    return v[0] if len(v) == 1 else v


def _option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"option {text!r} must be KEY=VALUE, e.g. "
                                         "threshold=1200")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key.isidentifier():
        raise argparse.ArgumentTypeError(f"option name {key!r} is not a valid name")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    if isinstance(value, list):
        value = tuple(value)
    return key, value


def _add_segmenter_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--segmenter", "-s", required=required, metavar="NAME",
                   help="a registered segmenter (see `blockbuster info`): threshold, "
                        "watershed, cellpose, or one a plugin registers")
    p.add_argument("--option", "-o", action="append", type=_option, default=[],
                   metavar="KEY=VALUE",
                   help="a segmenter option; VALUE is read as JSON when it parses "
                        "(1200, 0.5, null, true, [3,3]), else as text; repeat for more")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``blockbuster`` (all subcommands)."""
    from . import __version__
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="show tracebacks and Prefect's logs on errors")
    common.add_argument("-v", "--verbose", action="store_true",
                        help="show progress logs (Prefect's and blockbuster's)")

    p = _Parser(prog=PROG, parents=[common],
                description="Tiled processing of huge microscopy images: run a segmenter "
                            "on every tile, merge into global labels.",
                epilog="Exit codes: 0 ok, 1 the work failed, 2 bad usage or input. "
                       "`blockbuster COMMAND --help` for each command.")
    p.add_argument("--version", action="version", version=f"blockbuster {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    r = sub.add_parser("run", parents=[common], help="segment an image tile by tile",
                       description="Segment IMAGE tile by tile with a registered segmenter "
                                   "and merge the tiles' labels into one label image.")
    r.add_argument("image", metavar="IMAGE",
                   help="zarr array, OME-Zarr image or TIFF")
    _add_segmenter_args(r, required=True)
    r.add_argument("--write-to", "-w", metavar="OUT",
                   help="output zarr path, or IMAGE/labels/NAME inside an OME-Zarr image "
                        "(default: labels/segmentation inside an OME-Zarr image, else "
                        "NAME.labels.zarr next to IMAGE)")
    r.add_argument("--tile-shape", "-t", type=_tile_shape, default="auto", metavar="SHAPE",
                   help="tile size per axis, e.g. 1024,1024, or 'auto' (default): the "
                        "largest that fits a worker's memory")
    r.add_argument("--overlap", type=_overlap, default=0, metavar="N",
                   help="halo around each tile, one int or one per axis (default 0)")
    r.add_argument("--merge", choices=["auto", "touch", "overlap"], default="auto",
                   help="touch: touching labels join; overlap: match in the halo by IoU; "
                        "auto (default): touch without overlap, else overlap")
    r.add_argument("--connectivity", type=int, default=1,
                   help="1 = faces ... ndim = corners too (default 1)")
    r.add_argument("--iou-threshold", type=float, default=0.5,
                   help="overlap merge: smallest IoU of one object (default 0.5)")
    r.add_argument("--skip-empty", action="store_true",
                   help="do not segment tiles with nothing above --empty-threshold")
    r.add_argument("--empty-threshold", type=float, default=None, metavar="X",
                   help="with --skip-empty: a tile is empty when no pixel exceeds X "
                        "(default 0; see `blockbuster estimate-empty`)")
    r.add_argument("--sequential-labels", action="store_true",
                   help="number objects exactly 1..N")
    r.add_argument("--channel-axis", type=int, default=None, metavar="AXIS",
                   help="axis holding channels (default: from OME metadata)")
    r.add_argument("--level", type=int, default=0,
                   help="pyramid level to segment (default 0, full resolution)")
    r.add_argument("--use-gpu", action="store_true", help="one worker per GPU")
    r.add_argument("--overwrite", action="store_true",
                   help="replace an output that is already complete (never a path "
                        "blockbuster did not write)")
    r.add_argument("--progress", action="store_true", help="progress bars per stage")
    r.add_argument("--json", action="store_true", help="print the result as JSON")
    r.set_defaults(func=_cmd_run)

    m = sub.add_parser("merge", parents=[common],
                       help="merge per-tile labels into global labels",
                       description="Merge per-tile labels (a zarr array whose chunks are "
                                   "tiles) into globally consistent labels.")
    m.add_argument("labels", metavar="LABELS", help="zarr array (or group + --component)")
    m.add_argument("--write-to", "-w", required=True, metavar="OUT", help="output zarr path")
    m.add_argument("--component", default=None, help="array path inside a zarr group")
    m.add_argument("--tile-shape", "-t", type=_tile_shape, default=None, metavar="SHAPE",
                   help="tiles (default: the array's chunks, or shards)")
    m.add_argument("--connectivity", type=int, default=1,
                   help="1 = faces ... ndim = corners too (default 1)")
    m.add_argument("--sequential-labels", action="store_true",
                   help="number objects exactly 1..N")
    m.add_argument("--progress", action="store_true", help="progress bars per stage")
    m.add_argument("--json", action="store_true", help="print the result as JSON")
    m.set_defaults(func=_cmd_merge)

    e = sub.add_parser("estimate-empty", parents=[common],
                       help="how many tiles are empty (nothing above a threshold)",
                       description="Estimate which tiles of IMAGE are empty, to choose "
                                   "--skip-empty and --empty-threshold.")
    e.add_argument("image", metavar="IMAGE")
    e.add_argument("--tile-shape", "-t", type=_tile_shape, required=True, metavar="SHAPE")
    e.add_argument("--threshold", type=float, default=None,
                   help="empty = no pixel above this (default: estimated from a sample)")
    e.add_argument("--channel-axis", type=int, default=None, metavar="AXIS")
    e.add_argument("--level", type=int, default=0)
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.set_defaults(func=_cmd_estimate_empty)

    i = sub.add_parser("info", parents=[common],
                       help="describe an image, this machine and the segmenters",
                       description="Describe IMAGE (format, shape, chunks, levels) and the "
                                   "tile shape 'auto' would pick for a segmenter; without "
                                   "IMAGE, this machine, the segmenters and the settings.")
    i.add_argument("image", metavar="IMAGE", nargs="?")
    _add_segmenter_args(i, required=False)
    i.add_argument("--overlap", type=_overlap, default=0, metavar="N")
    i.add_argument("--channel-axis", type=int, default=None, metavar="AXIS")
    i.add_argument("--level", type=int, default=0)
    i.add_argument("--use-gpu", action="store_true")
    i.add_argument("--json", action="store_true", help="print the result as JSON")
    i.set_defaults(func=_cmd_info)

    d = sub.add_parser("demo", parents=[common],
                       help="segment a synthetic nuclei image end to end",
                       description="Write a synthetic image of touching nuclei, segment it "
                                   "tile by tile, and print a summary with the F1 score.")
    d.add_argument("--workdir", default=None, help="where to write (default: a temp dir)")
    d.add_argument("--size", type=int, default=2048, help="image side in pixels (2048)")
    d.add_argument("--tile", type=int, default=512, help="tile side in pixels (512)")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.set_defaults(func=_cmd_demo)

    s = sub.add_parser("serve", parents=[common],
                       help="serve the Prefect deployments (segment, watch-acquisitions)",
                       description="Register the deployments 'segment' (with its event "
                                   "trigger) and 'watch-acquisitions' (scheduled) with the "
                                   "Prefect API at PREFECT_API_URL and run their flow runs "
                                   "until stopped. Configured by BLOCKBUSTER_* variables "
                                   "(docs/deployments.md).")
    s.add_argument("--limit", type=int, default=None,
                   help="most flow runs at once (default BLOCKBUSTER_SERVE_LIMIT, 1)")
    s.add_argument("--check", action="store_true",
                   help="check the settings and show what would be served; serve nothing")
    s.set_defaults(func=_cmd_serve)
    return p


# ---------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------
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
    from .flows.segment import prepare_segment, run_segment
    options = dict(a.option)
    tiling = {
        "tile_shape": None if a.tile_shape == "auto" else list(a.tile_shape),
        "overlap": list(a.overlap) if isinstance(a.overlap, tuple) else a.overlap,
        "merge": a.merge, "connectivity": a.connectivity,
        "iou_threshold": a.iou_threshold, "skip_empty": a.skip_empty,
        "empty_threshold": a.empty_threshold, "sequential_labels": a.sequential_labels,
        "use_gpu": a.use_gpu,
    }
    req = prepare_segment(a.image, {"name": a.segmenter, "options": options}, a.write_to,
                          tiling, channel_axis=a.channel_axis, level=a.level,
                          overwrite=a.overwrite, enforce_roots=False)
    res = run_segment(req, progress=a.progress)
    if a.json:
        _print_json(res)
    elif res["status"] == "segmented":
        print(f"segmented {res['image']}: {res['labels']} objects, {res['n_tiles']} tiles "
              f"of {'x'.join(map(str, res['tile_shape'] or []))}, {res['seconds']:.1f} s "
              f"-> {res['output']}")
    elif res["status"] == "already-segmented":
        print(f"{res['output']} is already complete; nothing to do (--overwrite replaces it)")
    if res["status"] == "busy":
        holder = res.get("held_by") or {}
        raise CommandError(f"{res['output']} is being written by another run "
                           f"(host {holder.get('host', '?')}, pid {holder.get('pid', '?')})")
    return EXIT_OK


def _cmd_merge(a: argparse.Namespace) -> int:
    from .api import merge_tile_labels
    if not os.path.exists(a.labels):
        from .errors import InputError
        raise InputError(f"labels {a.labels!r} do not exist")
    ts = None if a.tile_shape in (None, "auto") else a.tile_shape
    _, summary = merge_tile_labels(a.labels, input_component=a.component, tile_shape=ts,
                                   write_to=a.write_to, connectivity=a.connectivity,
                                   sequential_labels=a.sequential_labels,
                                   progress=a.progress, return_summary=True)
    if a.json:
        _print_json({k: v for k, v in summary.items() if k not in ("tiles", "seams")})
    else:
        print(f"merged {summary.get('n_tiles')} tiles: {summary.get('labels_before_merge')} "
              f"per-tile labels -> {summary.get('labels_after_merge')} -> "
              f"{summary.get('output')}")
    return EXIT_OK


def _cmd_estimate_empty(a: argparse.Namespace) -> int:
    from .api import estimate_empty_tiles
    if a.tile_shape == "auto":
        raise UsageError("estimate-empty needs an explicit --tile-shape, e.g. 512,512")
    r = estimate_empty_tiles(a.image, a.tile_shape, threshold=a.threshold,
                             channel_axis=a.channel_axis, level=a.level)
    if a.json:
        _print_json({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in r.items()})
        return EXIT_OK
    print(f"threshold      {r['threshold']:g} ({r['threshold_method']})")
    print(f"tiles          {r['n_tiles']} of {tuple(r['tile_shape'])}, grid "
          f"{tuple(r['grid_shape'])}")
    print(f"empty          {r['n_empty']} ({100 * r['empty_fraction']:.1f} %)")
    empty = r["empty"]
    if empty.ndim == 2 and empty.shape[1] <= 100 and empty.shape[0] <= 60:
        print("map            # has signal, . empty")
        for row in empty:
            print("               " + "".join("." if v else "#" for v in row))
    print(f"use            blockbuster run ... --skip-empty --empty-threshold "
          f"{r['threshold']:g}")
    return EXIT_OK


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)  # pragma: no cover


def _cmd_info(a: argparse.Namespace) -> int:
    from . import __version__
    from .cluster import allocation, gpu_info
    from .segmenters.registry import available_segmenters, get_segmenter
    from .settings import get_settings

    out: dict[str, Any] = {"blockbuster": __version__}
    if a.image is None:
        import prefect
        alloc = allocation()
        settings = get_settings()
        out.update({
            "prefect": prefect.__version__,
            "cpus": alloc["cpus"], "memory_bytes": alloc["memory_bytes"],
            "allocation_source": alloc["source"], "gpus": gpu_info(),
            "segmenters": list(available_segmenters()),
            "settings": settings.model_dump(),
            "prefect_api_url": os.environ.get("PREFECT_API_URL") or None,
        })
        if a.json:
            _print_json(out)
            return EXIT_OK
        print(f"blockbuster    {__version__} (prefect {prefect.__version__})")
        print(f"machine        {alloc['cpus']} CPUs, {_fmt_bytes(alloc['memory_bytes'])} "
              f"available ({', '.join(alloc['source'])})")
        gpus = out["gpus"]
        print("GPUs           " + (", ".join(f"{g['index']}: {g['name']} "
                                            f"{_fmt_bytes(g['memory_free'])} free"
                                            for g in gpus) or "none visible"))
        print(f"segmenters     {', '.join(out['segmenters'])}")
        print(f"data roots     {os.pathsep.join(settings.data_roots) or '(not set)'}")
        print(f"watch folder   {settings.watch_folder or '(not set)'}")
        print(f"Prefect API    {out['prefect_api_url'] or '(temporary local server)'}")
        return EXIT_OK

    from .api import choose_tile_shape
    from .core.formats import describe, open_path
    from .core.sources import open_image
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
    out.update({"image": describe(stored), "kind": stored.kind, "shape": list(src.shape),
                "dtype": str(src.dtype), "chunks": list(stored.chunks),
                "channel_axis": src.channel_axis, "levels": [list(lv) for lv in stored.levels],
                "scale": stored.scale, "segmenter": a.segmenter, "auto_tile_shape": list(ts),
                "auto_tile_shape_reason": why, "n_tiles": n_tiles})
    if a.json:
        _print_json(out)
        return EXIT_OK
    print(f"image          {out['image']}")
    if len(stored.levels) > 1:
        print(f"levels         {', '.join('x'.join(map(str, lv)) for lv in stored.levels)}")
    print(f"auto tiles     {'x'.join(map(str, ts))} -> {n_tiles} tiles"
          + (f" for {a.segmenter}" if a.segmenter else ""))
    print(f"               {why}")
    return EXIT_OK


def _cmd_demo(a: argparse.Namespace) -> int:
    try:
        from .demo import run_demo
    except ImportError as exc:
        raise CommandError(f"the demo is not available in this installation ({exc})") \
            from exc
    s = run_demo(a.workdir, shape=(a.size, a.size), tile_shape=(a.tile, a.tile),
                 progress=not a.no_progress)
    print("blockbuster demo")
    print(f"  image       {s.get('image_path')}")
    print(f"  tiles       {s.get('n_tiles')} of {s.get('tile_shape')}, overlap "
          f"{s.get('overlap')}, merge {s.get('merge')}")
    print(f"  labels      {s.get('labels_before_merge')} per tile -> "
          f"{s.get('labels_after_merge')} after the merge")
    if s.get("f1") is not None:
        print(f"  F1          {s['f1']:.3f} against the known nuclei (IoU 0.5)")
    if s.get("wall_seconds") is not None:
        print(f"  wall time   {s['wall_seconds']:.1f} s")
    print(f"  output      {s.get('output')}")
    return EXIT_OK


def _cmd_serve(a: argparse.Namespace) -> int:
    from .serve import describe_deployments, serve
    from .settings import get_settings
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
    from prefect.settings import PREFECT_API_URL
    url = PREFECT_API_URL.value()
    if not url:
        print("warning: PREFECT_API_URL is not set: serving on a temporary local Prefect "
              "server that stops with this process (docs/deployments.md)", file=sys.stderr)
    try:
        serve(settings, limit=a.limit if a.limit is not None else settings.serve_limit)
    except Exception as exc:
        import httpx
        if isinstance(exc, httpx.HTTPError) and not isinstance(exc, httpx.HTTPStatusError):
            raise CommandError(f"cannot reach the Prefect API at {url}: {exc}; start it "
                               "(`prefect server start`) or fix PREFECT_API_URL") from exc
        raise
    return EXIT_OK


# ---------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------
def _usage_error_types() -> tuple[type, ...]:
    from .errors import (InputError, InvalidParameterError, ModelNotFoundError,
                         PathNotAllowedError, SegmenterNotFoundError)
    types: list[type] = [UsageError, InvalidParameterError, InputError,
                         SegmenterNotFoundError, PathNotAllowedError, ModelNotFoundError,
                         FileNotFoundError, NotADirectoryError, IsADirectoryError]
    try:
        from pydantic import ValidationError
        types.append(ValidationError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def _one_line(exc: BaseException) -> str:
    try:
        from pydantic import ValidationError
        if isinstance(exc, ValidationError):
            from .flows.segment import one_line_validation_error
            return one_line_validation_error(exc)
    except ImportError:  # pragma: no cover
        pass
    text = " ".join(str(exc).split())
    if not text:
        text = type(exc).__name__
    elif not isinstance(exc, _usage_error_types()) and type(exc).__module__ == "builtins":
        text = f"{type(exc).__name__}: {text}"
    return text


def _quiet(args_debug: bool, verbose: bool) -> None:
    """Keep Prefect's console logs (and the tracebacks it logs) out of a CLI run.

    Prefect's logs still reach its API (the UI) when one is configured; only the console
    handler is raised. Set before Prefect configures logging (at its import).
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if args_debug or verbose:
        return
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    import warnings
    # a local cluster's dashboard falling back from a busy port 8787 is not news
    warnings.filterwarnings("ignore", message=r"Port \d+ is already in use",
                            category=UserWarning)


def _setup_logging(debug: bool, verbose: bool):
    """blockbuster's own log lines on stderr; returns a function undoing it."""
    lg = logging.getLogger("blockbuster")
    saved = (lg.level, lg.propagate)
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
    lg.addHandler(h)
    lg.setLevel(logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING)
    lg.propagate = False

    def restore() -> None:
        lg.removeHandler(h)
        lg.setLevel(saved[0])
        lg.propagate = saved[1]
    return restore


def _pre_scan(argv: Sequence[str]) -> tuple[bool, bool]:
    return "--debug" in argv, ("-v" in argv or "--verbose" in argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug, verbose = _pre_scan(argv)
    _quiet(debug, verbose)
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = debug or getattr(args, "debug", False)
    restore = _setup_logging(debug, verbose or getattr(args, "verbose", False))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except SystemExit:
        raise
    except BaseException as exc:
        code = EXIT_USAGE if isinstance(exc, _usage_error_types()) else EXIT_FAILURE
        if debug:
            import traceback
            traceback.print_exc()
        hint = " (--debug shows the traceback)" if code == EXIT_FAILURE and not debug else ""
        sys.stderr.write(f"{PROG}: error: {_one_line(exc)}{hint}\n")
        sys.stderr.flush()
        return code
    finally:
        restore()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""The argument parser of the command line: value parsers (shapes, overlaps,
``KEY=VALUE`` options) and :func:`build_parser`, which wires each subcommand to its
implementation in :mod:`blockbuster.cli`.

Examples
--------
>>> args = build_parser().parse_args(["info", "--option", "threshold=1200"])
>>> args.command, args.option
('info', [('threshold', 1200)])
>>> _tile_shape("512x512"), _overlap("16")
((512, 512), 16)
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ._commands import (
    _cmd_demo,
    _cmd_down,
    _cmd_estimate_empty,
    _cmd_info,
    _cmd_merge,
    _cmd_run,
    _cmd_serve,
    _cmd_up,
)
from ._errors import EXIT_USAGE, PROG

__all__ = ["build_parser"]


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
            f"{what} {text!r} must be integers separated by commas, e.g. 512,512"
        )
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
        raise argparse.ArgumentTypeError(f"option {text!r} must be KEY=VALUE, e.g. threshold=1200")
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
    p.add_argument(
        "--segmenter",
        "-s",
        required=required,
        metavar="NAME",
        help="a registered segmenter (see `blockbuster info`): threshold, "
        "watershed, cellpose, or one a plugin registers",
    )
    p.add_argument(
        "--option",
        "-o",
        action="append",
        type=_option,
        default=[],
        metavar="KEY=VALUE",
        help="a segmenter option; VALUE is read as JSON when it parses "
        "(1200, 0.5, null, true, [3,3]), else as text; repeat for more",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``blockbuster`` (all subcommands)."""
    from blockbuster import __version__

    common = _Parser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", help="show tracebacks and Prefect's logs on errors"
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show progress logs (Prefect's and blockbuster's)",
    )

    p = _Parser(
        prog=PROG,
        parents=[common],
        description="Tiled processing of huge microscopy images: run a segmenter "
        "on every tile, merge into global labels.",
        epilog="Exit codes: 0 ok, 1 the work failed, 2 bad usage or input. "
        "`blockbuster COMMAND --help` for each command.",
    )
    p.add_argument("--version", action="version", version=f"blockbuster {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    r = sub.add_parser(
        "run",
        parents=[common],
        help="segment an image tile by tile",
        description="Segment IMAGE tile by tile with a registered segmenter "
        "and merge the tiles' labels into one label image.",
    )
    r.add_argument("image", metavar="IMAGE", help="zarr array, OME-Zarr image or TIFF")
    _add_segmenter_args(r, required=True)
    r.add_argument(
        "--write-to",
        "-w",
        metavar="OUT",
        help="output zarr path, or IMAGE/labels/NAME inside an OME-Zarr image "
        "(default: labels/segmentation inside an OME-Zarr image, else "
        "NAME.labels.zarr next to IMAGE)",
    )
    r.add_argument(
        "--tile-shape",
        "-t",
        type=_tile_shape,
        default="auto",
        metavar="SHAPE",
        help="tile size per axis, e.g. 1024,1024, or 'auto' (default): the "
        "largest that fits a worker's memory",
    )
    r.add_argument(
        "--overlap",
        type=_overlap,
        default=0,
        metavar="N",
        help="halo around each tile, one int or one per axis (default 0)",
    )
    r.add_argument(
        "--merge",
        choices=["auto", "touch", "overlap"],
        default="auto",
        help="touch: touching labels join; overlap: match in the halo by IoU; "
        "auto (default): touch without overlap, else overlap",
    )
    r.add_argument(
        "--connectivity", type=int, default=1, help="1 = faces ... ndim = corners too (default 1)"
    )
    r.add_argument(
        "--iou-threshold",
        type=float,
        default=0.5,
        help="overlap merge: smallest IoU of one object (default 0.5)",
    )
    r.add_argument(
        "--skip-empty",
        action="store_true",
        help="do not segment tiles with nothing above --empty-threshold",
    )
    r.add_argument(
        "--empty-threshold",
        type=float,
        default=None,
        metavar="X",
        help="with --skip-empty: a tile is empty when no pixel exceeds X "
        "(default 0; see `blockbuster estimate-empty`)",
    )
    r.add_argument("--sequential-labels", action="store_true", help="number objects exactly 1..N")
    r.add_argument(
        "--channel-axis",
        type=int,
        default=None,
        metavar="AXIS",
        help="axis holding channels (default: from OME metadata)",
    )
    r.add_argument(
        "--level",
        type=int,
        default=0,
        help="pyramid level to segment (default 0, full resolution)",
    )
    r.add_argument("--use-gpu", action="store_true", help="one worker per GPU")
    r.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an output that is already complete (never a path blockbuster did not write)",
    )
    r.add_argument("--progress", action="store_true", help="progress bars per stage")
    r.add_argument("--json", action="store_true", help="print the result as JSON")
    r.set_defaults(func=_cmd_run)

    m = sub.add_parser(
        "merge",
        parents=[common],
        help="merge per-tile labels into global labels",
        description="Merge per-tile labels (a zarr array whose chunks are "
        "tiles) into globally consistent labels.",
    )
    m.add_argument("labels", metavar="LABELS", help="zarr array (or group + --component)")
    m.add_argument("--write-to", "-w", required=True, metavar="OUT", help="output zarr path")
    m.add_argument("--component", default=None, help="array path inside a zarr group")
    m.add_argument(
        "--tile-shape",
        "-t",
        type=_tile_shape,
        default=None,
        metavar="SHAPE",
        help="tiles (default: the array's chunks, or shards)",
    )
    m.add_argument(
        "--connectivity", type=int, default=1, help="1 = faces ... ndim = corners too (default 1)"
    )
    m.add_argument("--sequential-labels", action="store_true", help="number objects exactly 1..N")
    m.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a complete output of another run (never a path blockbuster did not write)",
    )
    m.add_argument("--progress", action="store_true", help="progress bars per stage")
    m.add_argument("--json", action="store_true", help="print the result as JSON")
    m.set_defaults(func=_cmd_merge)

    e = sub.add_parser(
        "estimate-empty",
        parents=[common],
        help="how many tiles are empty (nothing above a threshold)",
        description="Estimate which tiles of IMAGE are empty, to choose "
        "--skip-empty and --empty-threshold.",
    )
    e.add_argument("image", metavar="IMAGE")
    e.add_argument("--tile-shape", "-t", type=_tile_shape, required=True, metavar="SHAPE")
    e.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="empty = no pixel above this (default: estimated from a sample)",
    )
    e.add_argument("--channel-axis", type=int, default=None, metavar="AXIS")
    e.add_argument("--level", type=int, default=0)
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.set_defaults(func=_cmd_estimate_empty)

    i = sub.add_parser(
        "info",
        parents=[common],
        help="describe an image, this machine and the segmenters",
        description="Describe IMAGE (format, shape, chunks, levels) and the "
        "tile shape 'auto' would pick for a segmenter; without "
        "IMAGE, this machine, the segmenters and the settings.",
    )
    i.add_argument("image", metavar="IMAGE", nargs="?")
    _add_segmenter_args(i, required=False)
    i.add_argument("--overlap", type=_overlap, default=0, metavar="N")
    i.add_argument("--channel-axis", type=int, default=None, metavar="AXIS")
    i.add_argument("--level", type=int, default=0)
    i.add_argument("--use-gpu", action="store_true")
    i.add_argument("--json", action="store_true", help="print the result as JSON")
    i.set_defaults(func=_cmd_info)

    d = sub.add_parser(
        "demo",
        parents=[common],
        help="segment a synthetic nuclei image end to end",
        description="Write a synthetic image of touching nuclei, segment it "
        "tile by tile, and print a summary with the F1 score.",
    )
    d.add_argument("--workdir", default=None, help="where to write (default: a temp dir)")
    d.add_argument("--size", type=int, default=2048, help="image side in pixels (2048)")
    d.add_argument("--tile", type=int, default=512, help="tile side in pixels (512)")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.set_defaults(func=_cmd_demo)

    s = sub.add_parser(
        "serve",
        parents=[common],
        help="serve the Prefect deployments (segment, watch-acquisitions)",
        description="Register the deployments 'segment' (with its event "
        "trigger) and 'watch-acquisitions' (scheduled) with the "
        "Prefect API at PREFECT_API_URL and run their flow runs "
        "until stopped. Configured by BLOCKBUSTER_* variables "
        "(docs/deployments.md).",
    )
    s.add_argument(
        "--limit",
        type=int,
        default=None,
        help="most flow runs at once (default BLOCKBUSTER_SERVE_LIMIT, 1)",
    )
    s.add_argument(
        "--check",
        action="store_true",
        help="check the settings and show what would be served; serve nothing",
    )
    s.set_defaults(func=_cmd_serve)

    u = sub.add_parser(
        "up",
        parents=[common],
        help="start a local Prefect server (UI) that runs on this machine report to",
        description="Start `prefect server start` on 127.0.0.1 in the background and "
        "print the UI's address. Until `blockbuster down`, runs on this machine with no "
        "PREFECT_API_URL of their own (scripts, `blockbuster run`) report to it instead "
        "of a temporary server, so their runs and pictures stay visible.",
    )
    u.add_argument(
        "--port", type=int, default=None, help="port (default 4200 when free, else any)"
    )
    u.add_argument(
        "--timeout", type=float, default=180.0, help="seconds to wait for it to answer (180)"
    )
    u.set_defaults(func=_cmd_up)

    dn = sub.add_parser(
        "down",
        parents=[common],
        help="stop the local Prefect server `blockbuster up` started",
        description="Stop the Prefect server `blockbuster up` started (by its pid).",
    )
    dn.set_defaults(func=_cmd_down)
    return p

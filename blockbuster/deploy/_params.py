"""The parameters of the ``segment`` flow: pydantic models, and checking what was given.

:class:`SegmenterChoice` (a registered segmenter and its options) and
:class:`TilingOptions` are typed, titled and described, so the Prefect UI renders a form;
``_as_segmenter`` / ``_as_tiling`` turn plain values (a name, a dict) into them with
one-line errors. Re-exported by :mod:`blockbuster.deploy`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from blockbuster.errors import InvalidParameterError
from blockbuster.segmenters import (
    REQUIRED,
    available_segmenters,
    get_segmenter,
    load_factory,
    segmenter_options_schema,
)

__all__ = [
    "SegmenterName",
    "MergeMode",
    "SegmenterChoice",
    "TilingOptions",
    "one_line_validation_error",
]


# ---------------------------------------------------------------------------------------
# parameter models
# ---------------------------------------------------------------------------------------
def _registered_names() -> list[str]:
    return list(available_segmenters())


#: The registered segmenters, as an enum: a dropdown in the Prefect UI, and a value the
#: server checks against the deployment's parameter schema.
# mypy cannot type an Enum whose members are only known at run time (the registry)
SegmenterName = Enum(  # type: ignore[misc]
    "SegmenterName", [(n, n) for n in _registered_names()], type=str, module=__name__
)
SegmenterName.__doc__ = "A segmenter registered under the blockbuster.segmenters group."


class MergeMode(str, Enum):
    """How labels of neighbouring tiles are merged."""

    auto = "auto"
    touch = "touch"
    overlap = "overlap"


def _options_help() -> str:
    lines = []
    for name in _registered_names():
        try:
            schema = segmenter_options_schema(name)
        except Exception:  # a plugin whose dependencies are missing
            lines.append(f"{name}: (cannot be loaded here)")
            continue
        opts = []
        for k, spec in schema.items():
            default = "required" if spec.default is REQUIRED else f"default {spec.default!r}"
            opts.append(f"{k} ({default})")
        lines.append(f"{name}: " + (", ".join(opts) or "no options"))
    return (
        "Keyword options of the segmenter, as a JSON object, e.g. "
        '{"threshold": 1200, "min_size": 20}. Unknown options are refused. '
        + "; ".join(lines)
        + "."
    )


class SegmenterChoice(BaseModel):
    """A registered segmenter and its options."""

    model_config = ConfigDict(extra="forbid", title="Segmenter and options", use_enum_values=False)

    name: SegmenterName = Field(
        default=SegmenterName("watershed")
        if "watershed" in SegmenterName.__members__
        else list(SegmenterName)[0],
        title="Segmenter",
        description="Name of a segmenter registered under the 'blockbuster.segmenters' "
        "entry-point group (threshold: bright connected regions; watershed: "
        "splits touching round objects such as nuclei; cellpose: the Cellpose "
        "model, when installed). Only registered names are accepted.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, title="Segmenter options", description=_options_help()
    )

    def build(self) -> Callable:
        """The segmenter callable (raises SegmenterNotFoundError / InvalidParameterError).

        JSON lists become tuples (per-axis options such as ``footprint`` or
        ``smooth_sigma``)."""
        opts = {k: tuple(v) if isinstance(v, list) else v for k, v in self.options.items()}
        return get_segmenter(_enum_value(self.name), **opts)

    def check_paths(self, roots, model_dir: str | None = None) -> None:
        """Refuse an option naming a file (the factory's ``path_options``, e.g. cellpose's
        ``pretrained_model``) outside the data roots and the model folder. A bare model
        name (no folder in it, e.g. ``"cyto3"``) is looked up in the model folder by the
        segmenter itself and passes."""
        from blockbuster.io import parse_location, under_roots
        from blockbuster.segmenters import load_factory

        name = _enum_value(self.name)
        allowed = tuple(roots) + ((model_dir,) if model_dir else ())
        for key in getattr(load_factory(name), "path_options", ()):
            value = self.options.get(key)
            if value is None or (isinstance(value, str) and os.sep not in value):
                continue
            path = parse_location(value, param=f"{name} option {key}")
            under_roots(
                path,
                allowed,
                param=f"segmenter {name!r} option {key}",
                setting="BLOCKBUSTER_DATA_ROOTS or BLOCKBUSTER_MODEL_DIR",
            )


class TilingOptions(BaseModel):
    """How the image is cut into tiles and how tiles are merged."""

    model_config = ConfigDict(extra="forbid", title="Tiling options")

    tile_shape: list[int] | None = Field(
        default=None,
        title="Tile shape",
        description="Tile size per axis, e.g. [1024, 1024] or [64, 512, 512] (a channel "
        "axis, if listed, takes its whole extent). Empty: the largest tile "
        "whose working set fits the memory of one worker (automatic).",
    )
    overlap: int | list[int] = Field(
        default=0,
        title="Overlap (halo)",
        description="Pixels of context given to the segmenter around each tile, one number "
        "or one per axis; cropped away again. 0 for connected-component "
        "segmenters, about one object diameter for watershed or Cellpose.",
    )
    merge: MergeMode = Field(
        default=MergeMode.auto,
        title="Merge",
        description="touch: labels touching across a tile seam become one object. overlap: "
        "labels are matched inside the shared halo by IoU, so touching cells "
        "stay apart (needs overlap > 0). auto: touch without overlap, else "
        "overlap.",
    )
    connectivity: int = Field(
        default=1,
        ge=1,
        le=3,
        title="Connectivity",
        description="Which neighbours touch across a seam: 1 = faces only, up to the number "
        "of axes = diagonals and corners too.",
    )
    iou_threshold: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        title="IoU threshold",
        description="Overlap merge: the smallest intersection over union at which two "
        "labels of neighbouring tiles are the same object.",
    )
    skip_empty: bool = Field(
        default=False,
        title="Skip empty tiles",
        description="Do not run the segmenter on tiles with no pixel above the empty "
        "threshold (they get no labels and store nothing).",
    )
    empty_threshold: float | None = Field(
        default=None,
        title="Empty threshold",
        description="With 'Skip empty tiles': a tile is empty when none of its pixels "
        "exceeds this value (image units). Empty: 0.",
    )
    sequential_labels: bool = Field(
        default=False,
        title="Sequential labels",
        description="Number the objects exactly 1..N (no gaps) in the output.",
    )
    use_gpu: bool = Field(
        default=False,
        title="Use GPUs",
        description="Run one worker per GPU and size tiles to GPU memory (for GPU "
        "segmenters such as Cellpose).",
    )

    def tile_process_kwargs(self) -> dict[str, Any]:
        return {
            "tile_shape": tuple(self.tile_shape) if self.tile_shape else "auto",
            "overlap": tuple(self.overlap) if isinstance(self.overlap, list) else self.overlap,
            "merge": _enum_value(self.merge),
            "connectivity": self.connectivity,
            "iou_threshold": self.iou_threshold,
            "skip_empty": self.skip_empty,
            "empty_threshold": self.empty_threshold,
            "sequential_labels": self.sequential_labels,
            "use_gpu": self.use_gpu,
        }


def _enum_value(v: Any) -> Any:
    return v.value if isinstance(v, Enum) else v


# ---------------------------------------------------------------------------------------
# plain values (a name, a dict) to parameter models
# ---------------------------------------------------------------------------------------
def _as_segmenter(segmenter: Any) -> SegmenterChoice:
    if isinstance(segmenter, SegmenterChoice):
        return segmenter
    if isinstance(segmenter, str):
        segmenter = {"name": segmenter}
    if isinstance(segmenter, dict):
        name = segmenter.get("name", "watershed")
        load_factory(_enum_value(name))  # SegmenterNotFoundError with the list of names
        opts = segmenter.get("options") or {}
        if not isinstance(opts, dict):
            raise InvalidParameterError(
                f"segmenter options={opts!r} must be a mapping of option names to values"
            )
        extra = set(segmenter) - {"name", "options"}
        if extra:
            raise InvalidParameterError(
                f"segmenter has unknown field(s) {sorted(extra)}; give 'name' and 'options'"
            )
        return SegmenterChoice(name=_enum_value(name), options=opts)
    raise InvalidParameterError(
        f"segmenter={segmenter!r} must name a registered segmenter, e.g. "
        "{'name': 'watershed', 'options': {}}"
    )


def _as_tiling(tiling: Any) -> TilingOptions:
    if tiling is None:
        return TilingOptions()
    if isinstance(tiling, TilingOptions):
        return tiling
    if isinstance(tiling, dict):
        from pydantic import ValidationError

        try:
            return TilingOptions(**tiling)
        except ValidationError as exc:
            raise InvalidParameterError(one_line_validation_error(exc, "tiling")) from None
    raise InvalidParameterError(f"tiling={tiling!r} must be a mapping of tiling options")


def one_line_validation_error(exc: Exception, prefix: str = "") -> str:
    """A pydantic ValidationError as one line: ``field: message; field: message``."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc).splitlines()[0]
    parts = []
    for e in errors():
        loc = ".".join(str(x) for x in e.get("loc", ()))
        loc = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        parts.append(f"{loc}: {e.get('msg')} (got {e.get('input')!r})")
    return "; ".join(parts) or str(exc).splitlines()[0]

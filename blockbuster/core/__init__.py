"""Pure algorithms: tile grids, run plans, label checks and compaction, seam pairs, the
merge table, merge units, identities and metrics.

NumPy and SciPy only: no Prefect, no Dask distributed, no reading or writing of arrays
(that is :mod:`blockbuster.io`). Everything here can be used and tested without a cluster.
"""

from ._autosize import (
    DEFAULT_GPU_MEMORY_FACTOR,
    DEFAULT_GPU_MODEL_BYTES,
    DEFAULT_MEMORY_FACTOR,
    GPU_MAX_TILE_VOXELS,
    auto_tile_shape,
)
from ._empty import (
    sample_image,
    threshold_from_sample,
    tile_maxima,
)
from ._grid import TileGrid
from ._identity import array_token, fn_identity, fn_token, run_key, stable_hash
from ._labels import (
    check_tile_labels,
    compact_labels,
    compact_with_halo,
    map_through,
    present_ids,
)
from ._merge_table import MergeTable
from ._merge_units import (
    MIN_TILES_PER_UNIT,
    SMALL_TILE_FRACTION,
    index_unit,
    input_changed,
    relabel_unit,
    unit_samples,
    unit_tiles,
)
from ._metrics import (
    contingency,
    instance_f1,
    same_partition,
)
from ._pictures import (
    MAX_SIDE,
    N_LABEL_COLORS,
    TILE_MAP_COLORS,
    PreviewCanvas,
    color_index,
    grey_levels,
    label_colors,
    preview_palette,
    preview_step,
    render_preview,
    render_preview_indexed,
    render_tile_map,
    sample_starts,
    slow_tiles,
)
from ._plan import (
    MAX_TILES,
    RunPlan,
    make_plan,
    normalize_overlap,
    normalize_tile_shape,
)
from ._records import RECORD_DTYPE, SeamTable, TileRecords, seam_dtype, seam_rows
from ._seams import (
    band_key,
    face_key,
    match_iou,
    overlap_pairs,
    touch_pairs,
)
from ._tile_function import (
    CacheTokened,
    ChannelAware,
    GpuMemoryHinted,
    GpuModelSized,
    MemoryHinted,
    PlaneByPlane,
    TileFunction,
    cache_token_of,
)

__all__ = [
    "MAX_SIDE",
    "TILE_MAP_COLORS",
    "label_colors",
    "color_index",
    "N_LABEL_COLORS",
    "preview_palette",
    "render_preview_indexed",
    "preview_step",
    "PreviewCanvas",
    "grey_levels",
    "render_preview",
    "render_tile_map",
    "sample_starts",
    "slow_tiles",
    "map_through",
    "DEFAULT_GPU_MEMORY_FACTOR",
    "DEFAULT_GPU_MODEL_BYTES",
    "DEFAULT_MEMORY_FACTOR",
    "GPU_MAX_TILE_VOXELS",
    "MIN_TILES_PER_UNIT",
    "MergeTable",
    "RECORD_DTYPE",
    "SeamTable",
    "TileRecords",
    "seam_dtype",
    "seam_rows",
    "RunPlan",
    "SMALL_TILE_FRACTION",
    "TileGrid",
    "auto_tile_shape",
    "band_key",
    "check_tile_labels",
    "compact_labels",
    "compact_with_halo",
    "contingency",
    "face_key",
    "fn_token",
    "fn_identity",
    "array_token",
    "run_key",
    "stable_hash",
    "TileFunction",
    "CacheTokened",
    "ChannelAware",
    "MemoryHinted",
    "GpuMemoryHinted",
    "GpuModelSized",
    "PlaneByPlane",
    "cache_token_of",
    "index_unit",
    "input_changed",
    "instance_f1",
    "make_plan",
    "MAX_TILES",
    "match_iou",
    "normalize_overlap",
    "normalize_tile_shape",
    "overlap_pairs",
    "present_ids",
    "relabel_unit",
    "same_partition",
    "sample_image",
    "threshold_from_sample",
    "tile_maxima",
    "touch_pairs",
    "unit_samples",
    "unit_tiles",
]

"""What Dask workers run: the segment / seam-scan / relabel batch functions, their work
buffers and allocator tuning, and an in-process runner of the same stages (no cluster).

Imports :mod:`blockbuster.core` and :mod:`blockbuster.io`; knows nothing of Prefect.
"""

from ._gpu_memory import free_gpu_cache, gpu_free_bytes, is_cuda_oom
from ._in_process import run_locally
from ._memory import (
    Scratch,
    keep_freed_memory,
    touched_zeros,
)
from ._pictures import (
    preview_png,
    region_samples,
    render_pictures,
    sample_regions,
    sample_tile,
)
from ._tile_ops import (
    PREVIEW_FIELD,
    call_fn,
    empty_tiles,
    relabel_into,
    relabel_tiles,
    scan_tiles,
    segment_one,
    segment_tiles,
    table_luts,
)

__all__ = [
    "PREVIEW_FIELD",
    "call_fn",
    "free_gpu_cache",
    "gpu_free_bytes",
    "is_cuda_oom",
    "relabel_into",
    "empty_tiles",
    "Scratch",
    "touched_zeros",
    "keep_freed_memory",
    "relabel_tiles",
    "region_samples",
    "preview_png",
    "render_pictures",
    "run_locally",
    "sample_regions",
    "sample_tile",
    "scan_tiles",
    "segment_one",
    "segment_tiles",
    "table_luts",
]

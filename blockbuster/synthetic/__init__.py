"""Synthetic microscopy images with known truth: nuclei scenes rendered block by block,
sparse volumes, written to zarr without holding the image in memory.
"""

from ._scene import (
    nuclei_scene,
    sparse_nuclei,
    synthetic_nuclei,
)
from ._zarr import write_synthetic_zarr

__all__ = [
    "nuclei_scene",
    "sparse_nuclei",
    "synthetic_nuclei",
    "write_synthetic_zarr",
]

"""Dask clusters: what this machine (or allocation) offers, GPUs, the local cluster
blockbuster starts, checks of a user's client, and fanning batches of tiles out to
workers with a bounded window.

No Prefect here.
"""

from ._batches import (
    BATCH_VOXELS,
    StageWork,
    split_batches,
)
from ._gpus import (
    GPU_RESOURCE,
    gpu_layout,
    nvml_devices,
    parse_visible_devices,
    visible_gpus,
    worker_gpus,
)
from ._local import (
    ClusterHandle,
    allocation,
    check_client,
    client_threads,
    gpu_info,
    make_local_cluster,
    no_gpu_message,
)

__all__ = [
    "BATCH_VOXELS",
    "GPU_RESOURCE",
    "gpu_layout",
    "no_gpu_message",
    "nvml_devices",
    "parse_visible_devices",
    "visible_gpus",
    "worker_gpus",
    "ClusterHandle",
    "StageWork",
    "allocation",
    "check_client",
    "client_threads",
    "gpu_info",
    "make_local_cluster",
    "split_batches",
]

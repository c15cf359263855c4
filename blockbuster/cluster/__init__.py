"""Dask clusters: what this machine (or allocation) offers, GPUs, the local cluster
blockbuster starts (one per process, shared by the calls without a client), checks of
a user's client, and fanning batches of tiles out to workers with a bounded window.

No Prefect here.
"""

from ._batches import (
    BATCH_VOXELS,
    StageWork,
    slots,
    split_batches,
)
from ._gpus import (
    GPU_RESOURCE,
    check_gpu_client,
    declares_gpu,
    gpu_layout,
    gpu_worker_memory,
    gpu_workers,
    nvml_devices,
    parse_visible_devices,
    visible_gpus,
    worker_gpus,
)
from ._local import (
    FORKSERVER_PRELOAD,
    allocation,
    check_client,
    client_threads,
    gpu_info,
    make_local_cluster,
    no_gpu_message,
)
from ._shared import (
    RunCluster,
    close_local_cluster,
    local_cluster,
    shared_cluster_info,
    start_local_cluster,
    user_client,
)
from ._storage import StorageOptionsPlugin, share_storage_options

__all__ = [
    "BATCH_VOXELS",
    "FORKSERVER_PRELOAD",
    "GPU_RESOURCE",
    "check_gpu_client",
    "declares_gpu",
    "gpu_layout",
    "gpu_worker_memory",
    "gpu_workers",
    "no_gpu_message",
    "nvml_devices",
    "parse_visible_devices",
    "visible_gpus",
    "worker_gpus",
    "RunCluster",
    "StageWork",
    "StorageOptionsPlugin",
    "allocation",
    "check_client",
    "client_threads",
    "close_local_cluster",
    "gpu_info",
    "local_cluster",
    "make_local_cluster",
    "slots",
    "share_storage_options",
    "shared_cluster_info",
    "split_batches",
    "start_local_cluster",
    "user_client",
]

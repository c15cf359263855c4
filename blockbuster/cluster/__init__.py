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
from ._local import (
    ClusterHandle,
    allocation,
    check_client,
    client_threads,
    gpu_info,
    make_local_cluster,
)

__all__ = [
    "BATCH_VOXELS",
    "ClusterHandle",
    "StageWork",
    "allocation",
    "check_client",
    "client_threads",
    "gpu_info",
    "make_local_cluster",
    "split_batches",
]

"""blockbuster: tiled processing of arbitrarily large microscopy images.

Split an image into tiles, run any function on each tile in parallel on Dask, and merge
the per-tile labels into one globally consistent label image, streamed to zarr, as
Prefect 3 flows.

>>> from blockbuster import tile_process, merge_tile_labels, estimate_empty_tiles
"""

import os as _os

# The temporary Prefect server a script starts must not phone home nor log errors about
# its telemetry database writes; a user's explicit setting wins.
_os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from blockbuster.cluster import close_local_cluster, local_cluster, make_local_cluster  # noqa: E402

from .api import estimate_empty_tiles, merge_tile_labels, tile_process  # noqa: E402
from .errors import BlockbusterError  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "tile_process",
    "merge_tile_labels",
    "estimate_empty_tiles",
    "make_local_cluster",
    "close_local_cluster",
    "local_cluster",
    "BlockbusterError",
    "__version__",
]

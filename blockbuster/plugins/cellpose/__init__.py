"""Cellpose (3 or 4) as a tile function: :func:`cellpose_fn` builds a picklable callable
that loads its model once per worker process and segments 2D or 3D tiles.

Cellpose itself is imported lazily, so the callable can be built and pickled on a
machine without it (extra ``blockbuster[cellpose]``).
"""

from ._eval import choose_batch_size
from ._fn import CellposeFn, cellpose_fn
from ._models import clear_model_cache, model_loads
from ._versions import cellpose_major_version

__all__ = [
    "CellposeFn",
    "cellpose_fn",
    "cellpose_major_version",
    "choose_batch_size",
    "clear_model_cache",
    "model_loads",
]

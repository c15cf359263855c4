"""The object store staging's (:mod:`._object_staging`) format number, arrays' codec,
object suffix and JSON encoding of records (the local staging, :mod:`._staging`, uses
the same codec and suffix; kept apart so that neither module imports the other at
import time)."""

from __future__ import annotations

import numpy as np
from numcodecs import Blosc

__all__ = ["FORMAT", "PACK_SUFFIX"]

FORMAT = 2
_CODEC = Blosc(cname="lz4", clevel=1, shuffle=Blosc.SHUFFLE)
PACK_SUFFIX = ".pack"


def _json_default(obj: object) -> object:
    """JSON for NumPy scalars and arrays in records.

    Examples
    --------
    >>> import json
    >>> json.dumps({"n": np.int64(3), "a": np.arange(2)}, default=_json_default)
    '{"n": 3, "a": [0, 1]}'
    """
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)

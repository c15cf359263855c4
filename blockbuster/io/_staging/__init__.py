"""A run's staging area: the finished tiles, their records and arrays, kept until the
run is complete (per-tile resume).

- ``_local``: :class:`Staging`, packs appended in a folder every worker shares;
- ``_objects``: :class:`ObjectStaging`, objects written whole under an object store
  prefix (``Staging`` returns one for a URL root);
- ``_format``: what both share (the arrays' codec, records as JSON, the tile index).
"""

from ._local import Staging
from ._objects import FLUSH_BYTES, FLUSH_SECONDS, PREFETCH_BYTES, ObjectStaging

__all__ = ["Staging", "ObjectStaging", "FLUSH_SECONDS", "FLUSH_BYTES", "PREFETCH_BYTES"]

"""Opening images stored on disk — zarr arrays, OME-Zarr images, TIFF / OME-TIFF — lazily.

:func:`open_path` inspects a path (metadata only, never pixels) and returns an
:class:`ArraySource`: a small, picklable description of one array (one pyramid level) that
reads any region on demand.  Only *how to reopen* the data travels when it is pickled (to
a Dask worker, a subprocess, a Prefect task); each process reopens the store the first time
it reads and keeps the opened array in a per-process cache, so thousands of tile reads in
one worker open the store once.

Accepted inputs
---------------
1. a zarr v2 or v3 **array** (``zarr.open_array``);
2. a zarr **group** plus ``component``, the path of an array (or of an OME-Zarr image) in it;
3. an **OME-Zarr image group**: NGFF 0.4 (zarr v2, ``multiscales`` in ``.zattrs``) or 0.5
   (zarr v3, ``attributes.ome.multiscales`` in ``zarr.json``); older 0.1–0.3 images are read
   too.  ``level`` picks the dataset (0, full resolution, by default; negative values count
   from the coarsest).  The axis of type ``"channel"`` becomes ``channel_axis``, the
   ``scale`` transforms become ``scale``.  A bioformats2raw container holding a single image
   opens that image; a path pointing at one level array *inside* an OME-Zarr image opens the
   image at that level;
4. a **TIFF / OME-TIFF** file, read through tifffile's zarr store (``ZarrTiffStore``); the
   levels of a pyramidal OME-TIFF are the levels of the source, the ``C`` (else ``S``) axis
   is the channel axis, OME ``PhysicalSize*`` give the scale.

Anything else raises :class:`~blockbuster.errors.InputError` (an ``OSError``) with one line
naming the path and what was expected.

Examples
--------
>>> import tempfile, os, numpy as np, zarr
>>> d = tempfile.mkdtemp()
>>> z = zarr.create_array(os.path.join(d, "a.zarr"), shape=(4, 6), chunks=(2, 3), dtype="u2")
>>> z[...] = np.arange(24).reshape(4, 6)
>>> src = open_path(os.path.join(d, "a.zarr"))
>>> src.kind, src.shape, src.chunks, str(src.dtype)
('zarr', (4, 6), (2, 3), 'uint16')
>>> src.read((slice(1, 3), slice(0, 2)))
array([[ 6,  7],
       [12, 13]], dtype=uint16)
>>> import pickle
>>> pickle.loads(pickle.dumps(src)).read((slice(0, 1),)).tolist()
[[0, 1, 2, 3, 4, 5]]
"""

from __future__ import annotations

# The work is done in three modules, each with one job; every name importable from here
# before the split still is:
#   formats_readers: open_path, one reader per kind of input (zarr, OME-Zarr, TIFF);
#   formats_source:  ArraySource, the per-process cache of opened stores, describe;
#   formats_meta:    metadata and axes parsing (zarr nodes, OME-NGFF, scale, stamps).
from ..errors import InputError, InvalidParameterError  # noqa: F401
from .formats_meta import (  # noqa: F401
    _KNOWN_AXIS_TYPES,
    _ZARR_META,
    _axis_names_from,
    _channel_from_names,
    _check_level,
    _group_attrs,
    _join,
    _node_type,
    _ome_tiff_scale,
    _read_json,
    _scale_of,
    _shards,
    _stamp,
    _stat_mtime,
    _zarr_dim_names,
    channel_axis_of,
    ngff_metadata,
    normalize_axes,
)
from .formats_readers import (  # noqa: F401
    _TIFF_SUFFIXES,
    SUPPORTED_INPUTS,
    _members,
    _one_line,
    _open_group,
    _open_ome,
    _open_tiff,
    _open_zarr,
    open_path,
)
from .formats_source import (  # noqa: F401
    _CACHE,
    _CACHE_LOCK,
    _CACHE_SIZE,
    ArraySource,
    _cached,
    _open_tiff_level,
    _open_zarr_array,
    clear_cache,
    describe,
)

__all__ = ["ArraySource", "open_path", "describe", "SUPPORTED_INPUTS"]

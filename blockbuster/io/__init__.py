"""Reading and writing arrays: zarr / OME-Zarr / TIFF readers (:func:`open_path`,
:func:`open_image`), the NGFF label writer, the direct whole-chunk and shard path, the
output array and its completion record, the staging of finished tiles, and object
stores (URLs: :mod:`blockbuster.io._stores`).

Imports :mod:`blockbuster.core` only (never Prefect, never Dask distributed).
"""

from ._array_source import ArraySource, describe
from ._chunkfiles import ChunkFiles, chunk_files
from ._durable import fsync_dir, fsync_file, fsync_tree
from ._lock import OutputLock, hidden_path, lock_path, lock_timeout
from ._ngff import LabelTarget, label_target
from ._output import ATTR, OutputTarget
from ._places import (
    check_apart,
    check_replaceable,
    check_staging,
    completion_record,
    is_within,
    local_store,
    member_path,
    output_state,
    parse_location,
    staging_state,
    under_roots,
    under_url_roots,
)
from ._png import data_url, encode_png, png_size, write_png
from ._readback import LabelReader, group_shape, read_labels
from ._readers import open_path
from ._shardfiles import ShardReader, ShardWriter
from ._sources import (
    ImageSource,
    full_slices,
    open_image,
)
from ._staging import ObjectStaging, Staging
from ._stamp import STAMP_ENV, file_stamp, stamp_mode, tree_stamp
from ._stores import (
    all_storage_options,
    check_url,
    is_url,
    join_url,
    redact,
    set_storage_options,
    split_url,
    zarr_location,
)
from ._zarrio import (
    open_zarr_array_cached,
    read_region,
    read_regions,
    write_regions,
)

__all__ = [
    "ATTR",
    "OutputLock",
    "check_apart",
    "check_replaceable",
    "check_staging",
    "completion_record",
    "hidden_path",
    "is_within",
    "local_store",
    "lock_path",
    "lock_timeout",
    "member_path",
    "output_state",
    "parse_location",
    "staging_state",
    "under_roots",
    "under_url_roots",
    "ArraySource",
    "ChunkFiles",
    "ImageSource",
    "LabelReader",
    "LabelTarget",
    "OutputTarget",
    "ShardReader",
    "ShardWriter",
    "ObjectStaging",
    "Staging",
    "all_storage_options",
    "check_url",
    "is_url",
    "join_url",
    "split_url",
    "redact",
    "set_storage_options",
    "zarr_location",
    "chunk_files",
    "describe",
    "data_url",
    "encode_png",
    "file_stamp",
    "fsync_dir",
    "fsync_file",
    "fsync_tree",
    "STAMP_ENV",
    "stamp_mode",
    "tree_stamp",
    "full_slices",
    "group_shape",
    "label_target",
    "open_image",
    "open_path",
    "open_zarr_array_cached",
    "png_size",
    "read_labels",
    "read_region",
    "read_regions",
    "write_png",
    "write_regions",
]

"""Built-in segmenters and the segmenter registry.

A segmenter factory takes keyword options and returns a picklable callable
``seg(tile) -> labels`` (uint32, 0 = background, the tile's spatial shape). The built-ins:

- :func:`threshold`: threshold (Otsu by default) + connected components;
- :func:`watershed`: threshold + distance-transform seeded watershed, which splits
  touching nuclei.

Plugins register more under the entry-point group ``blockbuster.segmenters``;
:func:`get_segmenter` builds any registered one by name.

Examples
--------
>>> import numpy as np
>>> from blockbuster.segmenters import get_segmenter
>>> seg = get_segmenter("threshold", threshold=0.5)
>>> seg(np.array([[0.0, 1.0], [1.0, 0.0]]))
array([[0, 1],
       [2, 0]], dtype=uint32)

"""

from ._base import SegmenterBase
from ._registry import (
    REQUIRED,
    available_segmenters,
    get_segmenter,
    load_factory,
    segmenter_options_schema,
)
from ._threshold import ThresholdSegmenter, threshold
from ._watershed import WatershedSegmenter, watershed

__all__ = [
    "REQUIRED",
    "SegmenterBase",
    "ThresholdSegmenter",
    "WatershedSegmenter",
    "available_segmenters",
    "get_segmenter",
    "load_factory",
    "segmenter_options_schema",
    "threshold",
    "watershed",
]

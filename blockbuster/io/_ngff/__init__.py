"""NGFF (OME-Zarr) label images written into an OME-Zarr image.

- ``_target``: :class:`LabelTarget` and :func:`label_target` (where the labels go, level 0);
- ``_meta``: the multiscales and image-label metadata;
- ``_pyramid``: the lower resolution levels, built once the labels are written.
"""

from ._target import LABEL_DTYPES, AccessMode, LabelTarget, label_target

__all__ = ["LabelTarget", "label_target", "LABEL_DTYPES", "AccessMode"]

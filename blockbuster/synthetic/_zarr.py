"""Writing synthetic images (and their true labels) to zarr v3 arrays, one
chunk-aligned block at a time, so their size is limited by disk, not memory."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from blockbuster.errors import InvalidParameterError

from . import _scene
from ._place import _check_shape, _sparse_box

__all__ = ["write_synthetic_zarr"]


def write_synthetic_zarr(
    path: str | os.PathLike,
    shape: Sequence[int],
    chunks: Sequence[int],
    seed: int = 0,
    *,
    kind: Literal["nuclei", "sparse"] = "nuclei",
    labels_path: str | os.PathLike | None = None,
    corner_fraction: float = 0.25,
    overwrite: bool = True,
    **options,
) -> str:
    """Write a synthetic image (optionally its true labels) to a zarr v3 array.

    The image is rendered one chunk-aligned block at a time, so its size is limited by
    disk, not memory; it equals ``synthetic_nuclei(shape, seed=seed, **options)[0]``
    (or ``sparse_nuclei(...)`` for ``kind="sparse"``) exactly. Blocks equal to the fill
    value 0 (empty corners of a sparse image) are not stored.

    Parameters
    ----------
    path : str or path-like
        Where to create the zarr array (a directory store).
    shape, chunks : tuple of int
        Array shape (2 or 3 axes) and chunk shape.
    seed : int
        Seed of the scene.
    kind : {"nuclei", "sparse"}
        A canvas full of nuclei (:func:`synthetic_nuclei`) or nuclei in one corner only
        (:func:`sparse_nuclei`, with ``corner_fraction``).
    labels_path : str or path-like, optional
        Also write the true labels (uint32, same chunks) there.
    corner_fraction : float
        For ``kind="sparse"``: the populated corner's extent per axis.
    overwrite : bool
        Replace an existing array at ``path`` (and ``labels_path``).
    **options
        Options of :func:`synthetic_nuclei` (``radius``, ``touching``, ``dtype``,
        ``noise``, ...); with ``kind="sparse"`` also ``outside``.

    Returns
    -------
    str
        ``path``, as a string. The array's attributes hold the scene parameters under
        ``"blockbuster_synthetic"``.

    Examples
    --------
    >>> import tempfile, zarr
    >>> from blockbuster.synthetic import synthetic_nuclei
    >>> tmp = tempfile.mkdtemp()
    >>> p = write_synthetic_zarr(tmp + "/img.zarr", (64, 80), (32, 32), seed=2)
    >>> z = zarr.open_array(p, mode="r")
    >>> z.shape, z.chunks, str(z.dtype)
    ((64, 80), (32, 32), 'uint16')
    >>> bool((z[...] == synthetic_nuclei((64, 80), seed=2)[0]).all())
    True
    """
    import zarr

    # The facade owns the scene type and the render block size (tests patch it there);
    # imported here, not at the top, because blockbuster.synthetic re-exports this module.

    shape = _check_shape(shape)
    try:
        chunks = tuple(int(c) for c in chunks)
    except TypeError as exc:
        raise InvalidParameterError(f"chunks={chunks!r} must be a tuple of ints") from exc
    if len(chunks) != len(shape) or any(c < 1 for c in chunks):
        raise InvalidParameterError(
            f"chunks={chunks!r} must give one positive int per axis of shape={shape!r}"
        )
    if kind == "nuclei":
        scene = _scene.nuclei_scene(shape, seed=seed, **options)
    elif kind == "sparse":
        outside = options.pop("outside", "zero")
        scene = _scene.nuclei_scene(
            shape, seed=seed, box=_sparse_box(shape, corner_fraction), outside=outside, **options
        )
    else:
        raise InvalidParameterError(f"kind={kind!r} must be 'nuclei' or 'sparse'")

    attrs: dict[str, Any] = {
        "blockbuster_synthetic": {
            "kind": kind,
            "seed": int(seed),
            "n_nuclei": scene.n_nuclei,
            "background_max": scene.background_max,
            "scale": scene.scale,
            "signal_box": None
            if scene.signal_box is None
            else [list(b) for b in scene.signal_box],
            "options": {
                k: (list(v) if isinstance(v, tuple) else v)
                for k, v in options.items()
                if k != "dtype"
            },
        }
    }
    image = zarr.create_array(
        store=os.fspath(path),
        shape=shape,
        chunks=chunks,
        dtype=scene.dtype,
        fill_value=0,
        overwrite=overwrite,
        attributes=attrs,
    )
    truth = None
    if labels_path is not None:
        truth = zarr.create_array(
            store=os.fspath(labels_path),
            shape=shape,
            chunks=chunks,
            dtype=np.uint32,
            fill_value=0,
            overwrite=overwrite,
            attributes=attrs,
        )
    # Blocks: whole chunks, grown along the leading axes up to ~4 Mi voxels.
    block = list(chunks)
    for ax in range(len(shape)):
        while block[ax] < shape[ax] and math.prod(block) * 2 <= 4 * _scene._RENDER_BLOCK_VOXELS:
            block[ax] = min(shape[ax], block[ax] * 2)
    # keep blocks chunk-aligned
    block = [max(c, (b // c) * c) for b, c in zip(block, chunks)]
    for region in scene.iter_blocks(block):
        im, lb = scene.render(region, labels=truth is not None)
        image[region] = im
        if truth is not None and lb is not None:
            truth[region] = lb
    return os.fspath(path)

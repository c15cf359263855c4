"""Cellpose as a per-tile function: :func:`cellpose_fn`.

``cellpose_fn(...)`` returns a small, picklable :class:`CellposeFn` object. Building it
imports neither Cellpose nor PyTorch and reads no weights, so it can be built on a
laptop and shipped to any Dask worker. On its first call in a worker *process* it loads
the model from a local file and keeps it in a per-process cache; every later call in
that process (any thread, any tile) reuses it. :func:`model_loads` counts the loads.

Nothing is ever downloaded at run time: a model named by ``model_type`` (``"cyto3"``,
``"nuclei"``, ``"cpsam"``, ...) must already lie in Cellpose's model directory
(``$CELLPOSE_LOCAL_MODELS_PATH``, else ``~/.cellpose/models``), and a model given as
``pretrained_model=path`` must exist at that path; otherwise
:class:`~blockbuster.errors.ModelNotFoundError` says where it looked and how to provide
the weights. The check happens before Cellpose is asked to build the model, so Cellpose's
own download fallback is never reached.

Cellpose 3 and Cellpose 4 are both supported; the installed major version is detected in
the process that runs the model. See ``docs/cellpose.md``.

Examples
--------
>>> from blockbuster.plugins.cellpose import cellpose_fn
>>> fn = cellpose_fn("cyto3", diameter=30)         # cheap: nothing is loaded yet
>>> fn.uses_gpu
False
>>> import pickle
>>> pickle.loads(pickle.dumps(fn)) == fn
True
>>> labels = fn(tile)                               # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from blockbuster.errors import (
    BlockbusterError,
    CellposeUnavailableError,
    InvalidParameterError,
    ModelNotFoundError,
)

# Re-exported: running eval on one tile, model lookup with the per-process cache, and
# version detection live in their own modules; every name importable from here before the
# split still is.
from ._eval import _eval_kwargs, _segment
from ._models import (
    _cached_model,
    _resolve_weights,
    clear_model_cache,
    model_loads,
    model_search_dirs,
    weights_digest,
)
from ._versions import (
    cellpose_major_version,
    cellpose_version,
)

__all__ = [
    "cellpose_fn",
    "CellposeFn",
    "CellposeUnavailableError",
    "model_loads",
    "clear_model_cache",
    "cellpose_version",
    "cellpose_major_version",
    "model_search_dirs",
]


# eval() arguments this plugin sets itself or that cannot work per tile.
_RESERVED_EVAL_KWARGS = {
    "x": "the tile is passed by blockbuster",
    "compute_masks": "labels are what a per-tile function must return",
    "progress": "it is a Qt progress bar of Cellpose's GUI",
}


# --------------------------------------------------------------------------------------
# The callable
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellposeFn:
    """A picklable per-tile Cellpose segmenter; build it with :func:`cellpose_fn`.

    Parameters are those of :func:`cellpose_fn`; ``eval_kwargs`` holds the extra keyword
    arguments passed on to Cellpose's ``CellposeModel.eval``.

    Attributes
    ----------
    memory_factor : float
        Rough peak working memory of one call as a multiple of the input tile's bytes
        (``tile.nbytes``), on top of a fixed 0.3-0.8 GB (PyTorch, the network and one
        batch of network inputs). Estimated from the growth of peak RSS (sampled every
        2 ms) between two tile sizes, Cellpose 3.1 on CPU, ``uint16`` tiles, default
        options, dense foreground: ~35x for 2D tiles (1024^2 -> 2048^2) and ~40x (no
        cells) to ~105x (1000 cells) for 3D tiles with ``do_3D=True`` (32x128^2 ->
        48x192^2), which runs the network on the YX, ZY and ZX planes and follows 3D
        flows. The larger figure is used. ``float32`` tiles need about half that
        multiple, ``uint8`` tiles twice; a ``diameter`` below the model's (30 px)
        upsamples the tile and multiplies the need by ``(30 / diameter) ** ndim``.
        See ``docs/cellpose.md``.
    uses_gpu : bool
        Whether the model runs on a GPU (``gpu``): ``tile_process`` then runs it on GPU
        workers only (and refuses where there are none).
    gpu_memory_factor : float
        GPU memory per voxel of a tile as a multiple of its input bytes, for
        ``tile_shape="auto"`` on GPUs: 20, an estimate from the arrays Cellpose keeps on
        the GPU per voxel (the image as float32, flows, cell probability, flow-following
        coordinates); **not measured on a GPU yet** (docs/gpu.md).
    gpu_model_bytes : int
        GPU memory of the model, its CUDA context and one batch of network inputs: 3 GiB,
        an estimate (Cellpose-SAM's ViT-L weights are 1.2 GB in float32).
    plane_by_plane : bool
        True when 3D tiles are segmented plane by plane without stitching
        (``do_3D=False``): ``tile_shape="auto"`` then keeps one-plane tiles.
    """

    model_type: str | os.PathLike | None = "cyto3"
    gpu: bool = False
    diameter: float | None = None
    pretrained_model: str | os.PathLike | None = None
    channel_axis: int | None = None
    do_3D: bool | None = None
    z_axis: int | None = None
    stitch_threshold: float | None = None
    eval_kwargs: dict = field(default_factory=dict, hash=False)

    memory_factor: ClassVar[float] = 100.0
    gpu_memory_factor: ClassVar[float] = 20.0
    gpu_model_bytes: ClassVar[int] = 3 << 30

    # ---- construction -----------------------------------------------------------------

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen dataclass: normalise once, here
        for name in ("model_type", "pretrained_model"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, (str, os.PathLike)):
                    raise InvalidParameterError(
                        f"{name} must be a model name or a path, got {value!r}"
                    )
                set_(self, name, os.fspath(value))
        if not isinstance(self.gpu, (bool, np.bool_)):
            raise InvalidParameterError(f"gpu must be True or False, got {self.gpu!r}")
        set_(self, "gpu", bool(self.gpu))
        if self.diameter is not None:
            if (
                isinstance(self.diameter, bool)
                or not isinstance(self.diameter, (int, float, np.number))
                or not math.isfinite(self.diameter)
                or self.diameter < 0
            ):
                raise InvalidParameterError(
                    f"diameter must be a positive number of pixels (or None for the "
                    f"model's training diameter), got {self.diameter!r}"
                )
            # 0 means "not given", as in Cellpose.
            set_(self, "diameter", float(self.diameter) if self.diameter > 0 else None)
        for name in ("channel_axis", "z_axis"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                    raise InvalidParameterError(
                        f"{name} must be an axis index of the tile or None, got {value!r}"
                    )
                set_(self, name, int(value))
        if self.do_3D is not None:
            set_(self, "do_3D", bool(self.do_3D))
        if self.stitch_threshold is not None:
            st = self.stitch_threshold
            if (
                isinstance(st, bool)
                or not isinstance(st, (int, float, np.number))
                or not 0 <= st <= 1
            ):
                raise InvalidParameterError(
                    f"stitch_threshold must be an IoU in [0, 1] (or None), got {st!r}"
                )
            set_(self, "stitch_threshold", float(st))
        if self.do_3D and (self.stitch_threshold or 0) > 0:
            raise InvalidParameterError(
                "do_3D=True and stitch_threshold > 0 are two different ways to segment a "
                "3D tile; pick one: do_3D=True for Cellpose's 3D mode, or do_3D=False "
                "with stitch_threshold (e.g. 0.5) to stitch 2D plane masks."
            )
        if not isinstance(self.eval_kwargs, dict):
            raise InvalidParameterError(
                f"eval_kwargs must be a dict, got {type(self.eval_kwargs).__name__}"
            )
        kwargs = dict(self.eval_kwargs)
        for key, why in _RESERVED_EVAL_KWARGS.items():
            if key in kwargs:
                raise InvalidParameterError(
                    f"cellpose_fn does not accept the Cellpose eval argument {key!r}: {why}."
                )
        normalize = kwargs.get("normalize", True)
        if not isinstance(normalize, (bool, dict)):
            raise InvalidParameterError(
                f"normalize must be True, False or a dict of Cellpose normalisation "
                f"options, got {normalize!r}"
            )
        set_(self, "eval_kwargs", kwargs)

    # ---- properties -------------------------------------------------------------------

    @property
    def uses_gpu(self) -> bool:
        """Whether this callable runs its model on a GPU (``gpu``)."""
        return self.gpu

    @property
    def batch_size(self) -> int:
        """Cellpose's ``batch_size`` (network patches per GPU batch) for this callable:
        the one given, else on a GPU the one chosen in this process for its free GPU
        memory (8 to 64, see :func:`choose_batch_size`), else Cellpose's default 8."""
        given = self.eval_kwargs.get("batch_size")
        if given:
            return int(given)
        if self.gpu:
            from ._eval import _BATCH

            return _BATCH.get(os.getpid(), 8)
        return 8

    def with_smaller_batch(self) -> CellposeFn | None:
        """The same segmentation with half the GPU batch (after a CUDA out-of-memory
        error; the labels do not depend on it), or None at a batch of one. A batch size
        chosen for the GPU is lowered for this process's later tiles too."""
        b = self.batch_size
        if b <= 1:
            return None
        if self.gpu and not self.eval_kwargs.get("batch_size"):
            from ._eval import lower_gpu_batch_size

            lower_gpu_batch_size(b // 2)
        return replace(self, eval_kwargs={**self.eval_kwargs, "batch_size": b // 2})

    @property
    def plane_by_plane(self) -> bool:
        """Whether a 3D tile is segmented one plane at a time, unstitched (``do_3D=False``
        without ``stitch_threshold``)."""
        return self.do_3D is False and not (self.stitch_threshold or 0) > 0

    # ---- model --------------------------------------------------------------------------

    def resolve_model_path(self) -> Path:
        """The local weights file this callable would load, checked to exist.

        Imports neither Cellpose nor PyTorch unless the installed Cellpose 4's default
        model is asked for (``model_type=None``). Call it on the machine that will run
        the model for an early check.

        Raises
        ------
        ModelNotFoundError
            The weights are not on this machine; the message says where it looked and
            how to provide them.
        InvalidParameterError
            A Cellpose 3 model is asked of Cellpose 4, or the reverse.
        """
        major = cellpose_major_version()
        return self._resolve(major)

    def _resolve(self, major: int | None) -> Path:
        return _resolve_weights(self.pretrained_model, self.model_type, major)

    def load_model(self):
        """The Cellpose model, loaded on first use in this process and cached.

        The cache key is the Cellpose major version, the resolved weights file (with its
        size and modification time) and ``gpu``: every :class:`CellposeFn` naming the
        same weights shares one model per process, whatever its eval options.

        Raises
        ------
        NoGPUError
            ``gpu=True`` and PyTorch sees no GPU in this process.
        ModelNotFoundError
            The weights are not on this machine.
        """
        major = cellpose_major_version()
        path = self._resolve(major)
        return _cached_model(major, path, self.gpu)

    def preload(self) -> None:
        """Load the model now (e.g. ``client.run(fn.preload)`` on every worker)."""
        self.load_model()

    # ---- identity -----------------------------------------------------------------------

    def cache_token(self) -> str:
        """A stable string identifying what this callable computes.

        Built from the class, the installed Cellpose version, the model (a hash of the
        weights file's bytes, computed once per process and cached by its path, size and
        modification time, when it is found here; else the name or path as given) and
        the options. ``gpu`` is left out: it changes where the
        labels are computed, not what they are. Never raises, never imports Cellpose.
        """
        ver = cellpose_version()
        try:
            major = int(ver.split(".")[0]) if ver else None
        except ValueError:
            major = None
        try:
            if major is None and self.pretrained_model is None and self.model_type is None:
                raise ModelNotFoundError("no default model without Cellpose")
            path = self._resolve(major)
            st = path.stat()
            model = {
                "path": str(path),
                "size": st.st_size,
                "xxh3_128": weights_digest(path),
            }
        except (BlockbusterError, OSError, ImportError):
            model = {
                "model_type": self.model_type,
                "pretrained_model": self.pretrained_model,
                "found": False,
            }
        options = asdict(self)
        options.pop("gpu")
        options.pop("eval_kwargs")
        options.pop("model_type")
        options.pop("pretrained_model")
        ident = {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "cellpose": ver,
            "model": model,
            "options": options,
            "eval_kwargs": {k: self.eval_kwargs[k] for k in sorted(self.eval_kwargs)},
        }
        text = json.dumps(ident, sort_keys=True, default=_jsonable)
        digest = hashlib.sha256(text.encode()).hexdigest()[:32]
        return f"{type(self).__module__}.{type(self).__qualname__}:cellpose-{ver}:{digest}"

    # ---- the call -----------------------------------------------------------------------

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        """Segment one tile; returns ``uint32`` labels with the tile's spatial shape.

        Parameters
        ----------
        tile : array_like
            A 2D or 3D tile, plus a channel axis when ``channel_axis`` is set.

        Returns
        -------
        numpy.ndarray
            ``uint32`` labels, 0 = background, shaped like the tile without its channel
            axis.
        """
        x = np.asarray(tile)
        if x.dtype == bool:
            x = x.astype(np.uint8)
        if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
            raise InvalidParameterError(f"cellpose_fn needs a numeric tile, got dtype {x.dtype}")
        ca = self.channel_axis
        if ca is not None:
            if not -x.ndim <= ca < x.ndim:
                raise InvalidParameterError(
                    f"channel_axis={ca} is out of range for a tile of shape {x.shape}"
                )
            ca %= x.ndim
        spatial = [a for a in range(x.ndim) if a != ca]
        if len(spatial) not in (2, 3):
            raise InvalidParameterError(
                f"cellpose_fn segments 2D or 3D tiles; got a tile of shape {x.shape} with "
                f"channel_axis={self.channel_axis}, i.e. {len(spatial)} spatial axes. "
                "Set channel_axis (the same as tile_process's) if the tile has channels."
            )
        if len(spatial) == 3:
            za = spatial[0] if self.z_axis is None else self.z_axis
            if not -x.ndim <= za < x.ndim or za % x.ndim not in spatial:
                raise InvalidParameterError(
                    f"z_axis={self.z_axis} is not a spatial axis of a tile of shape "
                    f"{x.shape} (channel_axis={self.channel_axis})"
                )
            za %= x.ndim
            canon = [za] + [a for a in spatial if a != za]
        else:
            if self.z_axis is not None:
                raise InvalidParameterError(
                    f"z_axis={self.z_axis} was given but the tile of shape {x.shape} has "
                    "only two spatial axes"
                )
            canon = list(spatial)
        # (Z,) Y, X, C
        xc = np.transpose(x, canon + ([ca] if ca is not None else []))
        if ca is None:
            xc = xc[..., np.newaxis]
        model = self.load_model()
        major = cellpose_major_version()

        if len(canon) == 2:
            masks = self._segment(model, major, xc, "2d")
        else:
            stitch = self.stitch_threshold or 0.0
            do_3d = self.do_3D if self.do_3D is not None else stitch == 0
            if xc.shape[0] == 1:  # a single plane: nothing to do in 3D
                masks = self._segment(model, major, xc[0], "2d")[np.newaxis]
            elif do_3d:
                masks = self._segment(model, major, xc, "3d")
            elif stitch > 0:
                masks = self._segment(model, major, xc, "stitch")
            else:  # plane by plane, labels kept unique across planes
                masks = np.zeros(xc.shape[:-1], np.uint32)
                offset = 0
                for z in range(xc.shape[0]):
                    plane = self._segment(model, major, xc[z], "2d")
                    fg = plane > 0
                    masks[z][fg] = plane[fg] + offset
                    offset = int(masks[z].max(initial=offset))
        # back to the tile's own axis order
        order = [canon.index(a) for a in sorted(canon)]
        return np.ascontiguousarray(np.transpose(masks, order), dtype=np.uint32)

    def _eval_kwargs(self, major: int, mode: str, nchan_given: bool) -> dict:
        return _eval_kwargs(self, major, mode, nchan_given)

    def _segment(self, model, major: int, xc: np.ndarray, mode: str) -> np.ndarray:
        """Run ``model.eval`` on a canonical (Z,)Y,X,C array; labels shaped (Z,)Y,X."""
        return _segment(self, model, major, xc, mode)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {"ndarray": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    return repr(obj)


def cellpose_fn(
    model_type: str | os.PathLike | None = "cyto3",
    gpu: bool = False,
    diameter: float | None = None,
    *,
    pretrained_model: str | os.PathLike | None = None,
    channel_axis: int | None = None,
    do_3D: bool | None = None,
    z_axis: int | None = None,
    stitch_threshold: float | None = None,
    **eval_kwargs: Any,
) -> CellposeFn:
    """A picklable per-tile function that segments tiles with Cellpose.

    The model is loaded lazily, once per worker process, from local files only; the
    returned object holds only these options, so it pickles small and fast.

    Parameters
    ----------
    model_type : str or path-like or None, default "cyto3"
        A built-in or user model name (``"cyto3"``, ``"nuclei"``, ... with Cellpose 3;
        ``"cpsam"`` with Cellpose 4), looked up in ``$CELLPOSE_LOCAL_MODELS_PATH`` or
        ``~/.cellpose/models``; or a path to a weights file. ``None``: the installed
        Cellpose's default model (``cyto3`` / ``cpsam``). Ignored when
        ``pretrained_model`` is given.
    gpu : bool, default False
        Run the model on a GPU. Where PyTorch sees no GPU the first call raises
        :class:`~blockbuster.errors.NoGPUError` instead of falling back to the CPU.
    diameter : float, optional
        Typical object diameter in pixels; tiles are rescaled so that objects have the
        model's training diameter (30 px for most models). ``None`` (or 0) assumes the
        objects already have it. Cellpose's per-image size estimate is not used: it
        would differ from tile to tile.
    pretrained_model : str or path-like, optional
        Path to a weights file (a custom or fine-tuned model). Takes precedence over
        ``model_type``. Must exist; nothing is downloaded.
    channel_axis : int, optional
        Axis of the tile that holds channels (the same as ``tile_process``'s
        ``channel_axis``); it is absent from the labels. ``None``: a grayscale tile.
        Cellpose 3 uses channels 1 and 2 as cytoplasm and nuclei unless
        ``channels=[c, n]`` (1-based, 0 = grayscale) is given; Cellpose 4 uses up to the
        first three channels, in any order.
    do_3D : bool, optional
        For a 3D tile: ``True`` runs Cellpose's 3D mode; ``False`` segments each plane in
        2D (stitched into 3D objects when ``stitch_threshold > 0``, else labels unique
        per plane). ``None``: 3D mode unless ``stitch_threshold > 0``. Ignored for 2D
        tiles.
    z_axis : int, optional
        Axis of a 3D tile that is Z (tile axes numbered with the channel axis included).
        Default: the first spatial axis.
    stitch_threshold : float, optional
        With ``do_3D`` False: IoU above which masks of consecutive planes are stitched
        into one 3D object (Cellpose's ``stitch_threshold``; e.g. 0.5).
    **eval_kwargs
        Passed on to ``CellposeModel.eval``: e.g. ``flow_threshold``,
        ``cellprob_threshold``, ``min_size``, ``anisotropy``, ``batch_size``,
        ``normalize`` (for a huge image, ``normalize={"lowhigh": (lo, hi)}`` with global
        intensity bounds keeps every tile on the same scale), ``channels`` (Cellpose 3).

    Returns
    -------
    CellposeFn
        ``fn(tile) -> uint32 labels`` with the tile's spatial shape; also has
        ``cache_token()``, ``memory_factor``, ``uses_gpu``, ``load_model()`` and
        ``resolve_model_path()``.

    Raises
    ------
    InvalidParameterError
        An option that cannot work (checked here, without Cellpose).

    See Also
    --------
    model_loads : models loaded by this process.

    Notes
    -----
    Errors that depend on the machine the model runs on
    (:class:`~blockbuster.errors.ModelNotFoundError`,
    :class:`~blockbuster.errors.NoGPUError`, :class:`CellposeUnavailableError`) are
    raised by the first call in a worker; ``fn.resolve_model_path()`` and
    ``fn.preload()`` check them ahead of a run.

    Examples
    --------
    >>> from blockbuster.plugins.cellpose import cellpose_fn
    >>> fn = cellpose_fn("nuclei", diameter=17, flow_threshold=0.6)
    >>> fn.diameter, fn.eval_kwargs
    (17.0, {'flow_threshold': 0.6})
    >>> fn.uses_gpu, fn.memory_factor > 1
    (False, True)

    A 3D stack of 2D planes, stitched, with a fine-tuned model on the GPU:

    >>> fn3 = cellpose_fn(pretrained_model="/models/my_cp3_model", gpu=True,
    ...                   do_3D=False, stitch_threshold=0.5)
    >>> fn3.uses_gpu
    True

    With Cellpose installed and the weights present locally:

    >>> from blockbuster import tile_process                        # doctest: +SKIP
    >>> labels = tile_process("image.zarr", cellpose_fn("cyto3", diameter=30),
    ...                       overlap=32, write_to="labels.zarr")  # doctest: +SKIP
    >>> fn(np.zeros((256, 256), np.uint16)).dtype                    # doctest: +SKIP
    dtype('uint32')
    """
    return CellposeFn(
        model_type=model_type,
        gpu=gpu,
        diameter=diameter,
        pretrained_model=pretrained_model,
        channel_axis=channel_axis,
        do_3D=do_3D,
        z_axis=z_axis,
        stitch_threshold=stitch_threshold,
        eval_kwargs=dict(eval_kwargs),
    )


#: The ``CellposeModel.eval`` options a registered ``cellpose`` segmenter accepts (the
#: deployments' and the command line's allow-list; :func:`cellpose_fn` called from Python
#: passes any). Read by :func:`blockbuster.segmenters.get_segmenter`.
cellpose_fn.extra_options = (  # type: ignore[attr-defined]
    "flow_threshold",
    "cellprob_threshold",
    "min_size",
    "max_size_fraction",
    "anisotropy",
    "batch_size",
    "normalize",
    "channels",
    "niter",
    "augment",
    "tile_overlap",
    "bsize",
    "resample",
    "interp",
    "flow3D_smooth",
    "invert",
    "rescale",
)
#: Options naming files: in deployments they must lie under the data roots or the
#: model folder (BLOCKBUSTER_MODEL_DIR).
cellpose_fn.path_options = ("model_type", "pretrained_model")  # type: ignore[attr-defined]

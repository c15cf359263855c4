"""Cellpose weights on this machine: where a model is looked up, and the per-process cache.

A model is found in local files only (never downloaded), built once per worker process
and kept in a per-process cache (:func:`model_loads` counts the loads). Re-exported by
:mod:`blockbuster.plugins.cellpose`.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from blockbuster.errors import InvalidParameterError, ModelNotFoundError, NoGPUError

from ._versions import CELLPOSE3_MODELS, CELLPOSE4_MODELS, cellpose_version

__all__ = ["model_loads", "clear_model_cache", "model_search_dirs"]


# --------------------------------------------------------------------------------------
# The per-process model cache
# --------------------------------------------------------------------------------------

_CACHE: dict[tuple, Any] = {}
_LOCK = threading.Lock()
_STATE = {"pid": os.getpid(), "loads": 0}


def _check_pid() -> None:
    # A forked child must not reuse its parent's models (CUDA contexts do not survive a
    # fork) nor report its parent's load count.
    if _STATE["pid"] != os.getpid():
        _CACHE.clear()
        _STATE["pid"] = os.getpid()
        _STATE["loads"] = 0


def model_loads() -> int:
    """How many Cellpose models this process has loaded (built and read from disk).

    On a Dask cluster, ``client.run(model_loads)`` gives the count per worker.

    Examples
    --------
    >>> from blockbuster.plugins.cellpose import model_loads
    >>> isinstance(model_loads(), int)
    True
    """
    with _LOCK:
        _check_pid()
        return _STATE["loads"]


def clear_model_cache() -> None:
    """Forget the models loaded in this process (frees their memory; GPU memory too).

    The load counter is not reset.
    """
    with _LOCK:
        _check_pid()
        _CACHE.clear()
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------
# Where models are looked for
# --------------------------------------------------------------------------------------


def model_search_dirs() -> list[Path]:
    """Directories searched for a model given by name, in order.

    ``$CELLPOSE_LOCAL_MODELS_PATH`` as it is now; Cellpose's ``models.MODEL_DIR`` when
    Cellpose is already imported in this process (it reads the variable at import);
    otherwise ``~/.cellpose/models``, Cellpose's default. Nothing is created.
    """
    dirs: list[Path] = []
    env = os.environ.get("CELLPOSE_LOCAL_MODELS_PATH")
    if env:
        dirs.append(Path(env).expanduser())
    mods = sys.modules.get("cellpose.models")
    model_dir = getattr(mods, "MODEL_DIR", None)
    if model_dir is not None:
        dirs.append(Path(model_dir).expanduser())
    if not env:
        dirs.append(Path.home() / ".cellpose" / "models")
    out: list[Path] = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


def _basenames(name: str, major: int | None) -> list[str]:
    """File names a built-in model name is stored under, per Cellpose version."""
    names = []
    if major in (None, 3) and name in ("cyto", "cyto2", "nuclei"):
        names.append(f"{name}torch_0")  # Cellpose 3's models.model_path()
    names.append(name)
    return names


def _default_model_name(major: int) -> str:
    if major < 4:
        return "cyto3"
    # Cellpose 4's own default (cpsam in 4.0/4.1, cpsam_v2 from 4.2).
    import inspect

    from cellpose import models

    default = (
        inspect.signature(models.CellposeModel.__init__).parameters["pretrained_model"].default
    )
    return default if isinstance(default, str) else "cpsam"


def _looks_like_path(spec: str) -> bool:
    seps = [os.sep] + ([os.altsep] if os.altsep else [])
    return any(s in spec for s in seps) or spec.startswith("~") or spec.startswith(".")


def _how_to_provide(name: str, basenames: list[str], dirs: list[Path], major: int | None) -> str:
    where = dirs[0] if dirs else Path.home() / ".cellpose" / "models"
    if major is not None and major >= 4:
        fetch = f"models.CellposeModel(pretrained_model='{name}')"
    else:
        fetch = f"models.CellposeModel(model_type='{name}')"
    return (
        "blockbuster never downloads model weights while it runs. To provide them: on a "
        "machine with internet access and the same Cellpose version, fetch them once "
        f'(python -c "from cellpose import models; {fetch}"), which saves '
        f"~/.cellpose/models/{basenames[0]} there; copy that file to {where}/ on every "
        "machine that runs tiles (or set CELLPOSE_LOCAL_MODELS_PATH on the workers to a "
        "shared directory holding it); or pass pretrained_model='/path/to/weights' to "
        "cellpose_fn."
    )


def _resolve_weights(
    pretrained_model: str | os.PathLike | None,
    model_type: str | os.PathLike | None,
    major: int | None,
) -> Path:
    """The local weights file of a model spec (see :meth:`CellposeFn.resolve_model_path`)."""
    if pretrained_model is not None:
        spec, what = os.fspath(pretrained_model), "pretrained_model"
    elif model_type is not None:
        spec, what = os.fspath(model_type), "model_type"
    else:
        if major is None:
            raise ModelNotFoundError(
                "model_type=None means the installed Cellpose's default model, but "
                "Cellpose is not installed here."
            )
        spec, what = _default_model_name(major), "model_type"
    path = Path(spec).expanduser()
    if path.is_file():
        return path.resolve()
    if path.is_dir():
        raise ModelNotFoundError(
            f"{what}={spec!r} is a directory; give the weights file inside it."
        )
    if _looks_like_path(spec) or what == "pretrained_model" and path.suffix:
        raise ModelNotFoundError(
            f"{what}={spec!r}: no such file ({path.resolve()}). Copy the weights "
            "there, or pass the path of an existing Cellpose weights file. "
            "blockbuster never downloads model weights while it runs."
        )
    # A model name: look in Cellpose's model directories.
    if major is not None and major >= 4 and spec in CELLPOSE3_MODELS:
        raise InvalidParameterError(
            f"{what}={spec!r} is a Cellpose 3 model, but Cellpose "
            f"{cellpose_version()} is installed here and cannot run Cellpose 3 "
            "weights. Use a Cellpose 4 model (model_type='cpsam'), or install "
            "'cellpose>=3.1,<4' on the workers."
        )
    if major == 3 and spec in CELLPOSE4_MODELS:
        raise InvalidParameterError(
            f"{what}={spec!r} is a Cellpose 4 model, but Cellpose "
            f"{cellpose_version()} is installed here. Install 'cellpose>=4' on the "
            "workers, or use a Cellpose 3 model such as model_type='cyto3'."
        )
    basenames = _basenames(spec, major)
    dirs = model_search_dirs()
    looked = []
    for d in dirs:
        for b in basenames:
            candidate = d / b
            looked.append(str(candidate))
            if candidate.is_file():
                return candidate.resolve()
    env = os.environ.get("CELLPOSE_LOCAL_MODELS_PATH")
    raise ModelNotFoundError(
        f"Cellpose model {what}={spec!r} is not available on this machine "
        f"(host {socket.gethostname()}). Looked for: "
        f"{', '.join(looked)} (CELLPOSE_LOCAL_MODELS_PATH="
        f"{env if env else 'unset'}). " + _how_to_provide(spec, basenames, dirs, major)
    )


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def _cached_model(major: int, path: Path, gpu: bool):
    """The model of weights file ``path`` from this process's cache, built on a miss."""
    st = path.stat()
    key = (major, str(path), st.st_size, st.st_mtime_ns, gpu)
    with _LOCK:
        _check_pid()
        model = _CACHE.get(key)
        if model is None:
            if gpu:
                _require_gpu()
            # weights that changed on disk replace their stale model
            for old in [k for k in _CACHE if k[1] == key[1]]:
                del _CACHE[old]
            model = _build_model(major, path, gpu)
            _CACHE[key] = model
            _STATE["loads"] += 1
    return model


def _require_gpu() -> None:
    import torch

    mps = getattr(torch.backends, "mps", None)
    if torch.cuda.is_available() or (mps is not None and mps.is_available()):
        return
    raise NoGPUError(
        "cellpose_fn(gpu=True), but PyTorch sees no GPU in this worker process "
        f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none: a CPU-only build'}, "
        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}). "
        "blockbuster does not fall back to the CPU silently. Run on GPU workers "
        "(tile_process(..., use_gpu=True) or make_local_cluster(use_gpu=True)) with a "
        "CUDA build of PyTorch, or pass gpu=False."
    )


def _build_model(major: int, path: Path, gpu: bool):
    """Construct a Cellpose model from an existing local weights file (never downloads)."""
    from cellpose import models

    if major < 4:
        # ---- Cellpose 3: models.CellposeModel(gpu, pretrained_model=path, model_type=None)
        # With an existing path and no model_type, Cellpose 3 reads the file and nothing
        # else. Transformer-backbone models need backbone="transformer".
        kwargs: dict[str, Any] = {"gpu": gpu, "pretrained_model": str(path), "model_type": None}
        if "transformer" in path.name:
            kwargs["backbone"] = "transformer"
        model = models.CellposeModel(**kwargs)
    else:
        # ---- Cellpose 4: models.CellposeModel(gpu, pretrained_model=path); no model_type,
        # no channels. An existing path is loaded as is (a missing one would download).
        model = models.CellposeModel(gpu=gpu, pretrained_model=str(path))
    if gpu and not getattr(model, "gpu", False):
        raise NoGPUError(
            "cellpose_fn(gpu=True), but Cellpose could not place the model on a GPU in "
            "this worker process; it would have run on the CPU. Check the CUDA build of "
            "PyTorch and CUDA_VISIBLE_DEVICES, or pass gpu=False."
        )
    _convert_for_cpu(model)
    return model


def _convert_for_cpu(model) -> None:
    """Convert a CPU model's network to its MKL-DNN layers once, while it is loaded.

    On a CPU with MKL-DNN, Cellpose calls ``torch.utils.mkldnn.to_mkldnn(net)`` on
    every forward pass. That call replaces the network's layers in place and compiles
    each replacement with TorchScript (Python's ``ast.parse``). Threads of one worker
    that share the cached model would race on it: a half-converted network, TorchScript's
    "Can't redefine method", or CPython 3.11's "AST constructor recursion depth
    mismatch". Converted here, under the cache lock, every later call finds nothing left
    to convert: the same layers, the same masks, no compiling per tile.
    """
    net = getattr(model, "net", None)
    if net is None or not getattr(net, "mkldnn", False):
        return  # on a GPU, or a network without the MKL-DNN path (Cellpose-SAM)
    from torch.utils import mkldnn as mkldnn_utils

    net.eval()  # MKL-DNN batch norm exists for inference only; Cellpose sets it anyway
    mkldnn_utils.to_mkldnn(net)  # replaces the layers of ``net`` itself


_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}
_DIGESTS_LOCK = threading.Lock()


def weights_digest(path: Path) -> str:
    """xxh3-128 of a weights file's bytes, computed once per process and cached by the
    file's resolved path, size and modification time (and its ctime and inode, which
    any rewrite changes even when size and mtime are kept): a changed file is hashed
    again.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkstemp()[1]); _ = p.write_bytes(b"weights")
    >>> weights_digest(p) == weights_digest(p)
    True
    """
    import xxhash

    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    with _DIGESTS_LOCK:
        hit = _DIGESTS.get(key)
    if hit is not None:
        return hit
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    with _DIGESTS_LOCK:
        _DIGESTS[key] = digest
    return digest

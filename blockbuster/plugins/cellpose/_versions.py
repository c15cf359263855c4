"""Which Cellpose is installed: version lookup and the model names of each major version.

Reads package metadata only; imports neither Cellpose nor PyTorch. Re-exported by
:mod:`blockbuster.plugins.cellpose`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys

from blockbuster.errors import CellposeUnavailableError

__all__ = ["CELLPOSE3_MODELS", "CELLPOSE4_MODELS", "cellpose_version", "cellpose_major_version"]

#: Built-in model names of Cellpose 3 (weights incompatible with Cellpose 4).
CELLPOSE3_MODELS = frozenset(
    {
        "cyto3",
        "nuclei",
        "cyto2_cp3",
        "tissuenet_cp3",
        "livecell_cp3",
        "yeast_PhC_cp3",
        "yeast_BF_cp3",
        "bact_phase_cp3",
        "bact_fluor_cp3",
        "deepbacs_cp3",
        "cyto2",
        "cyto",
        "CPx",
        "transformer_cp3",
        "neurips_cellpose_default",
        "neurips_cellpose_transformer",
        "neurips_grayscale_cyto2",
        "CP",
        "TN1",
        "TN2",
        "TN3",
        "LC1",
        "LC2",
        "LC3",
        "LC4",
    }
)
#: Built-in model names of Cellpose 4 (Cellpose-SAM family; incompatible with Cellpose 3).
CELLPOSE4_MODELS = frozenset({"cpsam", "cpsam_v2", "cpdino", "cpdino-vitb"})


_VERSION: dict[int, str] = {}  # pid -> version found (not cached while not installed)


def cellpose_version() -> str | None:
    """The installed Cellpose version string, or ``None`` when it is not installed.

    Reads package metadata only (imports neither Cellpose nor PyTorch).
    """
    pid = os.getpid()
    if pid in _VERSION:
        return _VERSION[pid]
    try:
        ver = importlib.metadata.version("cellpose")
    except importlib.metadata.PackageNotFoundError:
        if importlib.util.find_spec("cellpose") is None:
            return None
        try:  # a source checkout without metadata
            mod = importlib.import_module("cellpose.version")
            ver = str(getattr(mod, "version", "unknown"))
        except Exception:  # pragma: no cover - broken installation
            ver = "unknown"
    _VERSION[pid] = ver
    return ver


def cellpose_major_version() -> int:
    """The installed Cellpose major version (3 or 4; newer majors use the 4 branch).

    Raises
    ------
    CellposeUnavailableError
        Cellpose is not installed, or is older than 3.
    """
    ver = cellpose_version()
    if ver is None:
        raise CellposeUnavailableError(
            "cellpose_fn needs Cellpose, which is not installed in this Python "
            f"environment ({sys.executable}). Install it where the tiles are processed: "
            "pip install 'blockbuster[cellpose]' (install a CPU or CUDA build of torch "
            "first, see docs/cellpose.md)."
        )
    try:
        major = int(ver.split(".")[0])
    except ValueError:
        major = 4  # "unknown": assume a current checkout
    if major < 3:
        raise CellposeUnavailableError(
            f"Cellpose {ver} is installed, but cellpose_fn supports Cellpose 3.1 and 4: "
            "pip install -U 'cellpose>=3.1'."
        )
    return major

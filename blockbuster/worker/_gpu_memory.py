"""CUDA out-of-memory on a worker: recognising it, freeing PyTorch's cache, and what
to say when a tile does not fit.

A tile whose ``fn`` runs out of GPU memory is not retried as it was (the same call
fails the same way): :func:`~blockbuster.worker.call_fn` frees PyTorch's cached blocks
and calls the function's smaller-batch variant (``fn.with_smaller_batch()``, which
``cellpose_fn`` has: half the Cellpose ``batch_size``, down to 1), then fails naming the
tile and the memory it needed. PyTorch is never imported here: only used when the tile
function already imported it.

Examples
--------
>>> is_cuda_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
True
>>> is_cuda_oom(ValueError("bad tile"))
False
"""

from __future__ import annotations

import sys

__all__ = ["is_cuda_oom", "free_gpu_cache", "gpu_free_bytes"]


def is_cuda_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is a CUDA out-of-memory error (PyTorch's, or any library's that
    says so in CUDA's words)."""
    torch = sys.modules.get("torch")
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    text = str(exc)
    return "CUDA out of memory" in text or "CUDA_ERROR_OUT_OF_MEMORY" in text


def free_gpu_cache() -> None:
    """Give PyTorch's cached GPU blocks back to the driver (no-op without PyTorch/CUDA)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover - a broken CUDA state: nothing more to free
        pass


def gpu_free_bytes() -> tuple[int, int] | None:
    """(free, total) bytes of this process's current GPU, or None without PyTorch/CUDA."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            return int(free), int(total)
    except Exception:  # pragma: no cover
        pass
    return None

"""PNG files of RGB arrays (Pillow), as bytes, ``data:`` URLs and files.

Examples
--------
>>> import numpy as np
>>> png = encode_png(np.zeros((4, 6, 3), np.uint8))
>>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n", png_size(png)
(True, (6, 4))
>>> data_url(png).startswith("data:image/png;base64,iVBOR")
True
"""

from __future__ import annotations

import base64
import io
import os

import numpy as np

from ._chunkfiles import write_file

__all__ = ["encode_png", "data_url", "png_size", "write_png"]


#: pictures with more pixels than this are stored with a 256-colour palette
PALETTE_PIXELS = 1 << 18
#: zlib level of a PNG stored from given palette indices
PALETTE_LEVEL = 1


def encode_png(
    rgb: np.ndarray, palette_pixels: int = PALETTE_PIXELS, palette: np.ndarray | None = None
) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 array, or of (H, W) uint8 indices into
    ``palette`` (Pillow).

    Flat label colours compress well, a noisy image under them does not: an RGB PNG of
    a 1024² preview over a microscopy image is ~1.5 MB and takes ~10x longer to
    compress than the picture took to draw. A picture of more than ``palette_pixels``
    pixels is therefore stored with a 256-colour palette (Pillow's fast octree
    quantizer, zlib level 1: ~0.4-0.5 MB, measured in bench/pictures.py); smaller ones
    exactly, in RGB (zlib level 6). With ``palette`` (at most 256 colours, ``(n, 3)``
    uint8), the indices are stored as they are, exactly, with nothing to quantize (a
    merge's preview: ``render_preview_indexed``; ~5x faster to encode than quantizing
    its RGB).

    Examples
    --------
    >>> pal = np.array([[0, 0, 0], [255, 0, 0]], np.uint8)
    >>> png = encode_png(np.array([[0, 1], [1, 0]], np.uint8), palette=pal)
    >>> png_size(png)
    (2, 2)
    """
    from PIL import Image

    if palette is not None:
        idx = np.ascontiguousarray(rgb, dtype=np.uint8)
        pal = np.ascontiguousarray(palette, dtype=np.uint8)
        if idx.ndim != 2 or pal.ndim != 2 or pal.shape[1] != 3 or not 0 < len(pal) <= 256:
            raise ValueError(
                "expected (H, W) indices and a palette of at most 256 RGB colours, got "
                f"indices of shape {idx.shape} and a palette of shape {pal.shape}"
            )
        img = Image.frombytes("P", (idx.shape[1], idx.shape[0]), idx.tobytes())
        img.putpalette(pal.tobytes())
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=PALETTE_LEVEL)
        return buf.getvalue()
    arr = np.ascontiguousarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB array of shape (H, W, 3), got {arr.shape}")
    img = Image.fromarray(arr)
    buf = io.BytesIO()
    if arr.shape[0] * arr.shape[1] > palette_pixels:
        img.quantize(256, method=Image.Quantize.FASTOCTREE).save(
            buf, format="PNG", compress_level=1
        )
    else:
        img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) of PNG bytes, from the header."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def data_url(png: bytes) -> str:
    """``data:image/png;base64,...``: a URL the Prefect UI (any browser) shows inline."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def write_png(path: str | os.PathLike, png: bytes) -> str:
    """Write PNG bytes to ``path`` atomically (temporary name, then rename); returns it."""
    path = os.fspath(path)
    write_file(path, png)
    return path

"""Pyramid building for OME-Zarr label images: levels 1..n-1 made from level 0 on
disk by nearest-neighbour striding, block by block, optionally in parallel.

:class:`_PyramidMixin` holds the pyramid methods of
:class:`~blockbuster.io.LabelTarget`.

Examples
--------
>>> _axis_map(48, 24), _axis_map(5, 3)
(slice(0, 48, 2), slice(0, 6, 2))
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from blockbuster.errors import InvalidParameterError

from .._metadata import _node_type
from .._places import local_store

if TYPE_CHECKING:
    from ._target import AccessMode

__all__: list[str] = []


def _axis_map(prev: int, out: int) -> slice | np.ndarray:
    """Which voxels of an axis of length ``prev`` make an axis of length ``out``.

    A slice ``::k`` when ``out`` is ``prev / k`` rounded up or down for an integer ``k``
    (every usual pyramid), else nearest-neighbour indices of the voxel centres.
    """
    if out >= prev:
        return slice(None) if out == prev else np.minimum((np.arange(out) * prev) // out, prev - 1)
    k = max(1, round(prev / out))
    if out in (-(-prev // k), prev // k):
        return slice(0, k * out, k)
    return np.minimum(((np.arange(out) + 0.5) * prev / out).astype(np.int64), prev - 1)


class _PyramidMixin:
    """Pyramid methods of :class:`~blockbuster.io.LabelTarget` (which defines
    the fields, the level paths and shapes, ``_open_group`` and ``_array_kwargs``)."""

    __slots__ = ()

    if TYPE_CHECKING:  # defined by LabelTarget

        @property
        def level0_path(self) -> str: ...
        @property
        def group_path(self) -> str: ...
        @property
        def n_levels(self) -> int: ...
        @property
        def level_shapes(self) -> list[tuple[int, ...]]: ...
        def level_path(self, level: int) -> str: ...
        def _open_group(self, path: str, mode: AccessMode = "a") -> Any: ...
        def _array_kwargs(
            self, shape: Any, dtype: Any, chunks: Any, compressors: Any
        ) -> dict[str, Any]: ...

    def create_levels(self) -> None:
        """Create the empty arrays of levels 1..n-1 (chunks and codecs as level 0)."""
        import zarr

        kind, _ = _node_type(self.level0_path)
        if kind != "array":
            raise InvalidParameterError(
                f"{self.level0_path!r} does not exist; call create_level0() and write "
                "level 0 before building the pyramid"
            )
        a0 = zarr.open_array(store=local_store(self.level0_path, read_only=True), mode="r")
        group = self._open_group(self.group_path, mode="r+")
        comp = a0.compressors
        for lv in range(1, self.n_levels):
            kw = self._array_kwargs(
                self.level_shapes[lv], a0.dtype, a0.chunks, list(comp) if comp else None
            )
            group.create_array(str(lv), **kw)

    def level_blocks(self, level: int, max_block_bytes: int = 64 << 20) -> list[tuple[slice, ...]]:
        """Chunk-aligned output blocks of ``level`` (each at most ``max_block_bytes``).

        Blocks of one level can be computed in any order and in parallel (each writes
        whole chunks of its own); levels must be built in order.
        """
        import zarr

        arr = zarr.open_array(store=local_store(self.level_path(level), read_only=True), mode="r")
        shape, chunks = tuple(arr.shape), tuple(arr.chunks)
        item = np.dtype(arr.dtype).itemsize
        mult = [1] * len(shape)
        for ax in range(len(shape)):  # grow along leading axes first
            while (
                mult[ax] * 2 * chunks[ax] <= max(shape[ax], chunks[ax])
                and item * np.prod([m * c for m, c in zip(mult, chunks)]) * 2 <= max_block_bytes
            ):
                mult[ax] *= 2
        block = [m * c for m, c in zip(mult, chunks)]
        counts = [-(-s // b) for s, b in zip(shape, block)]
        blocks = []
        for index in np.ndindex(*counts):
            blocks.append(
                tuple(slice(i * b, min((i + 1) * b, s)) for i, b, s in zip(index, block, shape))
            )
        return blocks

    def downsample_block(self, level: int, block: tuple[slice, ...]) -> None:
        """Compute one block of ``level`` from ``level - 1`` on disk and write it.

        Reads only the voxels it keeps (strided zarr reads: memory is the output block
        plus a few decoded chunks), writes whole chunks.
        """
        import zarr

        prev = zarr.open_array(
            store=local_store(self.level_path(level - 1), read_only=True), mode="r"
        )
        out = zarr.open_array(store=local_store(self.level_path(level)), mode="r+")
        sel: list[Any] = []
        regular = True
        for ax, b in enumerate(block):
            m = _axis_map(prev.shape[ax], out.shape[ax])
            if isinstance(m, slice):
                start, _, step = m.indices(prev.shape[ax])
                step = step or 1
                sel.append(
                    slice(start + b.start * step, min(start + b.stop * step, prev.shape[ax]), step)
                )
            else:
                regular = False
                sel.append(m[b])
        if regular:
            data = prev[tuple(sel)]
        else:
            idx = [
                np.arange(prev.shape[ax])[s] if isinstance(s, slice) else s
                for ax, s in enumerate(sel)
            ]
            data = prev.oindex[tuple(idx)]
        out[tuple(block)] = data

    def build_pyramid(self, *, executor: Any = None, max_block_bytes: int = 64 << 20) -> None:
        """Build levels 1..n-1 from level 0 on disk, level by level, block by block.

        Parameters
        ----------
        executor : concurrent.futures.Executor, optional
            Runs the blocks of each level in parallel (a ``ThreadPoolExecutor``, a
            ``ProcessPoolExecutor``, or ``distributed.Client.get_executor()``); serial when
            omitted.  Memory per block is bounded by ``max_block_bytes``.
        max_block_bytes : int
            Upper bound on the output block size.
        """
        self.create_levels()
        for lv in range(1, self.n_levels):
            blocks = self.level_blocks(lv, max_block_bytes)
            fn = partial(_downsample_task, self, lv)
            if executor is None:
                for b in blocks:
                    fn(b)
            else:
                for _ in executor.map(fn, blocks):
                    pass


def _downsample_task(target: _PyramidMixin, level: int, block: tuple[slice, ...]) -> None:
    target.downsample_block(level, block)

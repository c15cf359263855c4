"""The global relabelling table, built from seam pairs only.

Every staged label is a node ``offset[tile] + local_id`` (offsets are the running sum
of per-tile label counts, so nodes are exactly 1..N). Connected components are computed
over the nodes that appear in seam pairs only; every other node keeps its own id. A
component's final id is its smallest node. With ``sequential=True`` the final ids are
renumbered to 1..K by subtracting, from each surviving id, the number of merged-away
nodes below it — folded into the table, so relabelling stays one pass over the voxels.

No table sized by the number of labels is built or shipped: :meth:`MergeTable.tile_lut`
produces the small per-tile slice a relabel task needs.

Examples
--------
>>> import numpy as np
>>> t = MergeTable.build(counts=[2, 1, 2], pairs=np.array([[2, 3], [3, 5]]))
>>> [t.tile_lut(i).tolist() for i in range(3)]
[[0, 1, 2], [0, 2], [0, 4, 2]]
>>> t.n_labels, t.max_label
(3, 4)
>>> s = MergeTable.build(counts=[2, 1, 2], pairs=np.array([[2, 3], [3, 5]]), sequential=True)
>>> [s.tile_lut(i).tolist() for i in range(3)]
[[0, 1, 2], [0, 2], [0, 3, 2]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ._labels import smallest_label_dtype

__all__ = ["MergeTable"]


@dataclass(frozen=True)
class MergeTable:
    """Offsets, merged nodes and their final ids (see the module docstring)."""

    counts: NDArray[Any]  # labels per tile (int64)
    offsets: NDArray[Any]  # first node of each tile minus one (int64)
    nodes: NDArray[Any]  # sorted nodes that take part in a merge
    final: NDArray[Any]  # their final (smallest-in-component) node
    removed: NDArray[Any]  # sorted nodes merged into another one
    sequential: bool = False

    @classmethod
    def build(cls, counts: ArrayLike, pairs: ArrayLike, sequential: bool = False) -> MergeTable:
        counts = np.asarray(counts, dtype=np.int64)
        offsets = np.zeros(counts.size, dtype=np.int64)
        if counts.size > 1:
            np.cumsum(counts[:-1], out=offsets[1:])
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        if pairs.shape[0] == 0:
            empty = np.zeros(0, dtype=np.int64)
            return cls(counts, offsets, empty, empty, empty, sequential)
        nodes, inv = np.unique(pairs, return_inverse=True)
        inv = inv.reshape(-1, 2)
        k = nodes.size
        graph = coo_matrix(
            (np.ones(inv.shape[0], dtype=np.int8), (inv[:, 0], inv[:, 1])), shape=(k, k)
        )
        _, comp = connected_components(graph, directed=False)
        # nodes are sorted, so the first member of each component is its smallest node
        rep = np.full(comp.max() + 1, -1, dtype=np.int64)
        first = np.unique(comp, return_index=True)[1]
        rep[comp[first]] = nodes[first]
        final = rep[comp]
        removed = nodes[final != nodes]
        return cls(counts, offsets, nodes, final, removed, sequential)

    @property
    def n_nodes(self) -> int:
        return int(self.counts.sum())

    @property
    def n_labels(self) -> int:
        """Number of distinct labels after merging."""
        return self.n_nodes - int(self.removed.size)

    @property
    def max_label(self) -> int:
        """Largest label id in the output (equals n_labels when sequential)."""
        if self.sequential:
            return self.n_labels
        if self.n_nodes == 0:
            return 0
        # the largest node survives unless merged away; find the largest surviving node
        top = self.n_nodes
        r = self.removed
        i = r.size - 1
        while i >= 0 and r[i] == top:
            top -= 1
            i -= 1
        return int(top)

    @property
    def dtype(self) -> np.dtype[Any]:
        return smallest_label_dtype(self.max_label)

    def tile_lut(self, tile: int, dtype: DTypeLike | None = None) -> NDArray[Any]:
        """The lookup table of one tile: ``lut[local_id] = final label`` (``lut[0] == 0``)."""
        n = int(self.counts[tile])
        off = int(self.offsets[tile])
        dtype = np.dtype(dtype) if dtype is not None else self.dtype
        lut = np.arange(off, off + n + 1, dtype=np.int64)
        lut[0] = 0
        lo, hi = np.searchsorted(self.nodes, [off + 1, off + n + 1])
        if hi > lo:
            lut[self.nodes[lo:hi] - off] = self.final[lo:hi]
        if self.sequential and self.removed.size:
            lut[1:] -= np.searchsorted(self.removed, lut[1:])
        return lut.astype(dtype, copy=False)

"""The output label array: created before relabelling, marked complete only at the end.

The array's attributes carry ``blockbuster = {"complete": false, ...}`` from creation
on; the very last write of a successful run sets ``complete`` to true together with
the run key and the label count. A crashed run therefore never leaves an output that
looks finished, and a new run over an incomplete output simply replaces it.

What may be replaced follows :mod:`blockbuster.io._places` (:func:`check_replaceable`):
only an output blockbuster wrote (unfinished, or complete with ``overwrite=True``),
checked again in :meth:`OutputTarget.create` right before anything is deleted.

When ``write_to`` points inside an OME-Zarr image (``image.zarr/labels/<name>``) the
labels are written as an NGFF label image (see :mod:`blockbuster.io`).

Examples
--------
>>> import tempfile, os
>>> out = OutputTarget(os.path.join(tempfile.mkdtemp(), "labels.zarr"))
>>> arr = out.create((8, 8), "uint32", (4, 4), {"run_key": "k"})
>>> out.completed_run() is None
True
>>> out.mark_complete({"run_key": "k", "n_labels": 0})
>>> out.completed_run()["run_key"]
'k'
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from typing import Any, Literal

import zarr

from blockbuster.errors import InvalidParameterError

from ._ngff import label_target
from ._places import (
    OUTPUT_MARKER,
    StateName,
    check_replaceable,
    completion_record,
    local_store,
    parse_location,
)
from ._stores import delete_prefix, is_url, join_url, write_bytes

__all__ = ["OutputTarget", "ATTR"]

ATTR = OUTPUT_MARKER


class OutputTarget:
    """Where the final labels go: a plain zarr array or an NGFF label image."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        zarr_format: int = 3,
        temporary: bool = False,
        overwrite: bool = False,
        param: str = "write_to",
        in_memory: bool = False,
    ):
        if zarr_format not in (2, 3):
            raise InvalidParameterError(f"zarr_format={zarr_format!r} must be 2 or 3")
        self.path = os.fspath(parse_location(path, param=param))
        self.zarr_format: Literal[2, 3] = 2 if zarr_format == 2 else 3
        self.temporary = temporary
        # a temporary output whose caller wants the labels as an array: the relabel
        # stage may fill ``labels`` in this process instead of writing the store
        self.in_memory = bool(in_memory and temporary)
        self.labels: Any = None
        self.overwrite = bool(overwrite)
        self.param = param
        self.token = ""
        #: the zarr format of the array :meth:`create` made (an NGFF label image's is its
        #: image's): opened with it, zarr reads one metadata document, not three
        self.created_format: Literal[2, 3] | None = None
        self._ngff = label_target(self.path)
        # finish() put the output's files on stable storage; the files of the run that
        # write_file adds (the table, the pictures: maybe while finish() runs, from
        # another thread) are listed here, and fsync-ed by mark_complete
        self._finished = False
        self._files: list[str] = []

    @property
    def is_ngff(self) -> bool:
        return self._ngff is not None

    @property
    def array_path(self) -> str:
        """Path of the full-resolution array the relabel tasks write to."""
        return self._ngff.level0_path if self._ngff is not None else self.path

    def describe(self) -> str:
        if self._ngff is not None:
            return f"OME-Zarr labels {self.path}"
        return f"{'temporary ' if self.temporary else ''}zarr array {self.path}"

    def state(self) -> StateName:
        """What is at the output now, when it may be (re)created; else
        :class:`~blockbuster.errors.OutputExistsError` (see :func:`check_replaceable`)."""
        return check_replaceable(self.path, overwrite=self.overwrite, param=self.param)

    def create(
        self,
        shape: Sequence[int],
        dtype: Any,
        chunks: Sequence[int],
        info: dict[str, Any],
        shards: Sequence[int] | None = None,
    ) -> zarr.Array:
        """(Re)create the array, marked incomplete; returns it. ``shards``: the shard
        shape, for a zarr v3 array outside an OME-Zarr (ignored elsewhere).

        Only an output blockbuster wrote is ever replaced (checked here, right before)."""
        state = "absent" if self.temporary else self.state()
        self.token = uuid.uuid4().hex
        attrs: dict[str, Any] = {ATTR: {"complete": False, **info}}
        if self._ngff is not None:
            arr = self._ngff.create_level0(tuple(shape), dtype, tuple(chunks))
            arr.attrs.update(attrs)
            self.created_format = self._ngff.zarr_format
            return arr
        if is_url(self.path):
            if state in ("incomplete", "complete"):
                delete_prefix(self.path)  # an object store has no folder to remove
        else:
            if state in ("incomplete", "complete"):
                shutil.rmtree(self.path)
            parent = os.path.dirname(self.path)
            if parent:
                os.makedirs(parent, exist_ok=True)
        sharded = shards is not None and self.zarr_format == 3
        extra: dict[str, Any] = {"shards": tuple(shards)} if shards is not None and sharded else {}
        arr = zarr.create_array(
            store=local_store(self.path),
            shape=tuple(shape),
            chunks=tuple(chunks),
            dtype=dtype,
            fill_value=0,
            zarr_format=self.zarr_format,
            attributes=attrs,
            **extra,
        )
        self.created_format = self.zarr_format
        return arr

    def file_path(self, name: str) -> str:
        """Where a file of the run that belongs with the output goes (inside it, so it
        is replaced and removed with it; zarr readers ignore it)."""
        return join_url(self.path, name) if is_url(self.path) else os.path.join(self.path, name)

    def write_file(self, name: str, data: bytes) -> str:
        """Write ``data`` at :meth:`file_path` (atomically: a temporary name renamed, or one
        PUT); returns the path."""
        path = self.file_path(name)
        if is_url(path):
            write_bytes(path, data)
            return path
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        self._files.append(path)
        return path

    def open(self, mode: str = "r") -> zarr.Array:
        return zarr.open_array(
            store=local_store(self.array_path, read_only=mode == "r"),
            mode=mode,
            zarr_format=self.created_format,
        )

    def completed_run(self) -> dict[str, Any] | None:
        """The completion record when the output is complete, else None."""
        return completion_record(self.path)

    def finish(self, colors: Any = None, executor: Any = None) -> None:
        """Everything of the output but its completion record: the pyramid and metadata
        for NGFF, then every file and directory of it ``fsync``-ed (a local output that is
        not temporary). A run calls it while its pictures are still being drawn, so that
        the two overlap; :meth:`mark_complete` does it when it was not done.

        ``executor`` (e.g. ``client.get_executor()``) builds NGFF pyramid levels in
        parallel, block by block.
        """
        if self._finished:
            return
        if self._ngff is not None:
            self._ngff.finish(colors=colors, executor=executor)
        from ._durable import fsync_tree

        if os.path.isdir(self.path) and not self.temporary:
            # a local output on stable storage before the record (a temporary one is
            # removed at exit: nothing can rely on it after a crash)
            fsync_tree(self.path)
        self._finished = True

    def mark_complete(
        self, info: dict[str, Any], colors: Any = None, executor: Any = None
    ) -> None:
        """Finish the output (:meth:`finish`, unless done) and mark it complete, last:
        the files :meth:`write_file` wrote (perhaps after or during :meth:`finish`) are
        ``fsync``-ed with their folders before the record is written."""
        self.finish(colors=colors, executor=executor)
        if self._files and not self.temporary and not is_url(self.path):
            from ._durable import fsync_dir, fsync_file

            for path in self._files:
                fsync_file(path)
            for folder in dict.fromkeys(os.path.dirname(p) for p in self._files):
                fsync_dir(folder)
        self._files = []
        arr = self.open("r+")
        arr.attrs[ATTR] = {"complete": True, **info}

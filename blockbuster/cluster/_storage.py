"""Giving every Dask worker the driver's ``storage_options`` (object store settings the
environment does not give), without putting them in any task's arguments."""

from __future__ import annotations

from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from blockbuster.io import all_storage_options, set_storage_options

__all__ = ["StorageOptionsPlugin", "share_storage_options"]


class StorageOptionsPlugin(WorkerPlugin):
    """Sets the options (URL prefix -> obstore settings) in each worker process, those
    present and those that join later."""

    name = "blockbuster-storage-options"

    def __init__(self, options: dict[str, dict[str, Any]]):
        self.options = options

    def __repr__(self) -> str:  # never show the settings (credentials)
        return f"StorageOptionsPlugin({len(self.options)} prefixes)"

    def setup(self, worker=None) -> None:
        for prefix, opts in self.options.items():
            set_storage_options(prefix, opts)


def share_storage_options(client) -> bool:
    """Register this process's storage options on ``client``'s workers; False when
    there are none (nothing is sent)."""
    options = all_storage_options()
    if not options:
        return False
    client.register_plugin(StorageOptionsPlugin(options))
    return True

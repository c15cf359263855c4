"""Prefect flows composing the stage tasks (no CLI, no argument parsing here)."""

from ._pipeline import CORRUPT_RETRIES, merge_flow, tile_process_flow

__all__ = [
    "CORRUPT_RETRIES",
    "merge_flow",
    "tile_process_flow",
]

"""Prefect flows composing the stage tasks (no CLI, no argument parsing here)."""

from ._pipeline import merge_flow, tile_process_flow

__all__ = [
    "merge_flow",
    "tile_process_flow",
]

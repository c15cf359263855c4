"""Prefect flows composing the stage tasks (no CLI, no argument parsing here)."""

from .pipeline import merge_flow, tile_process_flow

__all__ = ["tile_process_flow", "merge_flow"]

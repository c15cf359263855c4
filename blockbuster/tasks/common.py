"""Shared bits of the stage tasks: cache policies."""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import NO_CACHE, CachePolicy


__all__ = ["stage_cache_policy", "stage_key", "NO_CACHE"]


def stage_key(stage: str, run_key: str, generation: str) -> str:
    """The cache key of a stage of a run over one staging generation."""
    return f"blockbuster-{stage}-{run_key}-{generation}"


def _stage_key(stage: str):
    def key(context, parameters: dict[str, Any]) -> str | None:
        job = parameters.get("job")
        generation = getattr(job, "generation", None) if job is not None else None
        if not generation:
            return None
        return stage_key(stage, job.run_key, generation)
    return key


def stage_cache_policy(stage: str) -> CachePolicy:
    """Cache a stage by run key and staging generation, never by hashing pixels.

    The generation is a random id written when a staging area is created: a cached
    stage result is only ever reused together with the very staging it describes.
    """
    return CachePolicy.from_cache_key_fn(_stage_key(stage))


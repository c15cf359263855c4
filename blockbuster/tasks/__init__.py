"""Prefect tasks: thin wrappers that run the pure functions of :mod:`blockbuster.core`
on the Dask cluster, one Prefect task per stage, tiles fanned out in batches."""

"""Pure algorithms of blockbuster: NumPy, zarr and SciPy only (no Prefect, no Dask
distributed). Everything here can be used and tested without a cluster."""

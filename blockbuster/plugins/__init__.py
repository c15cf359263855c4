"""Optional plugins: per-tile functions built on third-party packages.

Each plugin lives in its own module and imports its heavy dependency lazily, so that
``import blockbuster.plugins.<name>`` works (and its callables can be built, pickled and
sent to workers) on a machine where that dependency is not installed.

- :mod:`blockbuster.plugins.cellpose`: :func:`~blockbuster.plugins.cellpose.cellpose_fn`,
  Cellpose 3 or 4 segmentation of 2D and 3D tiles (extra ``blockbuster[cellpose]``).
"""

"""The ``blockbuster`` command line: ``run``, ``merge``, ``estimate-empty``, ``info``,
``demo``, ``serve``.
"""

from ._main import main

__all__ = [
    "main",
]

"""amulet-lab: a Jupyter-first toolkit for classifying photos of Thai Buddhist amulets.

Importing the package is cheap: it loads no torch, starts no thread and touches no file.
Heavy modules (``amulet_lab.model``, ``amulet_lab.service`` ...) load when imported.
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"
__all__ = ["__version__", "load_ipython_extension"]

# A library adds only a NullHandler to its own logger (never to root); the edge configures output.
logging.getLogger("amulet_lab").addHandler(logging.NullHandler())


def load_ipython_extension(ipython) -> None:  # type: ignore[no-untyped-def]
    """``%load_ext amulet_lab``: registers the ``%%amulet_profile`` cell magic."""
    from amulet_lab.magics import register

    register(ipython)

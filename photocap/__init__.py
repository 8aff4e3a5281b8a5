"""photocap: batch image captioning for photo libraries.

The package is a library first; :mod:`photocap.cli` is a thin Typer layer over it.
Importing :mod:`photocap` must stay cheap (no torch), so ``photocap --help`` is instant.
"""

__version__ = "0.1.0"

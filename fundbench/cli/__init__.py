"""The ``fundbench`` command line (``fundbench.cli.main:main``)."""

from fundbench.cli.main import app, main

__all__ = ["app", "main"]

"""The ``clusterbus`` console script."""

from plugins.cli import main

__all__ = ["main"]

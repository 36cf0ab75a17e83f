"""Plugins and the App that hosts them, on top of :mod:`bus`."""

from plugins.app import App
from plugins.plugin import Plugin

__all__ = ["App", "Plugin"]

"""Plugins and the App that hosts them (built on :mod:`bus`; arrives with the plugin issue)."""

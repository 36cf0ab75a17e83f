"""The demo service as an App factory, for the runner: ``clusterbus run clusterbus.demo:app``.

One instance of the demo (the example plugins on a shared database), configured by
environment variables besides the ``CLUSTERBUS_*`` settings:

* ``CLUSTERBUS_DEMO_LABEL``: the node's name (default: the host name);
* ``CLUSTERBUS_DEMO_DATABASE_URL``: a SQLAlchemy async URL (default: ``clusterbus-demo.db``,
  a SQLite file in the working directory);
* ``CLUSTERBUS_DEMO_CONTROL``: ``1`` (or ``true``, ``yes``, ``on``) hosts the demo's control
  channel, through which any peer on the broker can add and remove fields and submit tasks;
  off by default.

Needs the ``demo`` extra (SQLAlchemy); ``import clusterbus`` does not import this module.
"""

from __future__ import annotations

import os

from plugins.app import App
from plugins.demo.node import node_app

LABEL_ENV = "CLUSTERBUS_DEMO_LABEL"
CONTROL_ENV = "CLUSTERBUS_DEMO_CONTROL"
_TRUE = frozenset({"1", "true", "yes", "on"})


def app() -> App:
    """A new demo node, configured by the environment (see the module's docstring)."""
    return node_app(
        label=os.environ.get(LABEL_ENV) or None,
        control=os.environ.get(CONTROL_ENV, "").strip().lower() in _TRUE,
    )


__all__ = ["app"]

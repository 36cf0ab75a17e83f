"""Instance identity: ``<host>-<pid>-<random>``, seen in logs and message headers."""

from __future__ import annotations

import os
import re
import secrets
import socket

MAX_HOST_LENGTH = 40
"""The host part of an instance id is cut to this many characters, so that the id (and the
instance's pub/sub queue ``<app>.instance.<id>``) stays short whatever the host name."""


def new_instance_id() -> str:
    """A fresh instance id, unique across hosts, processes and buses of one process.

    Only ASCII letters, digits, ``.`` and ``-``; the host part is at most
    :data:`MAX_HOST_LENGTH` characters, so the id is well within
    :data:`managers.names.MAX_INSTANCE_ID_LENGTH`.
    """
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:MAX_HOST_LENGTH] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"

"""Instance identity: ``<host>-<pid>-<random>``, seen in logs and message headers."""

from __future__ import annotations

import os
import re
import secrets
import socket


def new_instance_id() -> str:
    """A fresh instance id, unique across hosts, processes and buses of one process."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"

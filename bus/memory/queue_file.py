"""Where memory-mode queues go between runs: one msgpack file per app under ``storage_dir``."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import msgpack

from managers.envelope import Envelope

FORMAT_VERSION = 1
SHARED_FILE = "_shared.queues.msgpack"  # app names cannot start with "_"

Saved = dict[str, tuple[list[Envelope], list[Envelope]]]
"""Queue name -> (queued messages, dead letters)."""


def app_file(storage_dir: Path, app: str) -> Path:
    """The file that holds ``app``'s queues while no instance of it runs."""
    return storage_dir / f"{app}.queues.msgpack"


def shared_file(storage_dir: Path) -> Path:
    """The file that holds the shared queues (``queue.<channel>``) between runs."""
    return storage_dir / SHARED_FILE


def _pack(envelope: Envelope) -> dict[str, Any]:
    return {
        "body": envelope.body,
        "message_id": envelope.message_id,
        "sender": envelope.sender,
        "trace_id": envelope.trace_id,
        "timestamp": envelope.timestamp,
        "headers": dict(envelope.headers),
    }


def _unpack(record: dict[str, Any]) -> Envelope:
    return Envelope(
        body=bytes(record["body"]),
        message_id=str(record["message_id"]),
        sender=str(record["sender"]),
        trace_id=str(record["trace_id"]),
        timestamp=float(record["timestamp"]),
        headers=dict(record["headers"]),
    )


def save(path: Path, queues: Saved) -> int:
    """Write ``queues`` to ``path`` atomically (nothing when empty); returns messages saved."""
    kept = {name: q for name, q in queues.items() if q[0] or q[1]}
    if not kept:
        return 0
    data = {
        "version": FORMAT_VERSION,
        "saved_at": time.time(),
        "queues": {
            name: {"queued": [_pack(e) for e in queued], "dead": [_pack(e) for e in dead]}
            for name, (queued, dead) in kept.items()
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(msgpack.packb(data, use_bin_type=True))
    os.replace(tmp, path)
    return sum(len(q) + len(d) for q, d in kept.values())


def _check_version(data: Any) -> None:
    version = data.get("version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(f"unknown format version {version!r}")


def load(path: Path) -> Saved:
    """Read and delete ``path``; empty when it does not exist.

    A file that cannot be read is renamed to ``<name>.corrupt-<time>`` (kept for a human)
    and ``ValueError`` raised naming it.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    try:
        data = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        _check_version(data)
        loaded: Saved = {
            str(name): (
                [_unpack(r) for r in q["queued"]],
                [_unpack(r) for r in q["dead"]],
            )
            for name, q in data["queues"].items()
        }
    except Exception as exc:
        kept = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        os.replace(path, kept)
        raise ValueError(f"saved queues in {path} are unreadable (kept as {kept}): {exc}") from exc
    path.unlink()
    return loaded

"""Where memory-mode queues go between runs: one msgpack file per app under ``storage_dir``,
and the advisory lock that keeps a storage directory to one process at a time."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgpack

from managers.envelope import Envelope
from managers.errors import BusError

if sys.platform != "win32":
    import fcntl

FORMAT_VERSION = 1
SHARED_FILE = "_shared.queues.msgpack"  # app names cannot start with "_"
# Header strings may hold lone surrogates (an error text of a handler): carried as they are.
UNICODE_ERRORS = "surrogatepass"

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
    """Write ``queues`` to ``path`` atomically (nothing when empty); returns messages saved.

    Whatever fails (packing or writing) raises and leaves no temporary file behind; ``path``
    then still holds what it held before.
    """
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
    packed = msgpack.packb(data, use_bin_type=True, unicode_errors=UNICODE_ERRORS)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(packed)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    return sum(len(q) + len(d) for q, d in kept.values())


def _check_version(data: Any) -> None:
    version = data.get("version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(f"unknown format version {version!r}")


def decode(raw: bytes) -> Saved:
    """The queues of a saved file's bytes; raises (``ValueError`` or a msgpack error) when
    they are not a file this version wrote. Changes nothing anywhere."""
    data = msgpack.unpackb(raw, raw=False, strict_map_key=False, unicode_errors=UNICODE_ERRORS)
    _check_version(data)
    return {
        str(name): (
            [_unpack(r) for r in q["queued"]],
            [_unpack(r) for r in q["dead"]],
        )
        for name, q in data["queues"].items()
    }


def read(path: Path) -> Saved:
    """Read ``path`` without deleting it; empty when it does not exist.

    A file that cannot be decoded is renamed to ``<name>.corrupt-<time>`` (kept for a human)
    and ``ValueError`` raised naming it; a file that cannot be read raises ``OSError``.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    try:
        return decode(raw)
    except Exception as exc:
        kept = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        os.replace(path, kept)
        raise ValueError(f"saved queues in {path} are unreadable (kept as {kept}): {exc}") from exc


def discard(path: Path) -> None:
    """Delete ``path`` (once its messages are on the hub); a missing file is fine."""
    path.unlink(missing_ok=True)


def load(path: Path) -> Saved:
    """Read and delete ``path`` (see :func:`read`)."""
    saved = read(path)
    discard(path)
    return saved


# One process at a time per storage directory -------------------------------------------

_held: dict[str, tuple[int, int, int]] = {}  # real path -> (pid, descriptor, users)
_held_guard = threading.Lock()


class StorageLease:
    """This process's use of a storage directory, taken by :func:`lock_storage`."""

    def __init__(self, key: str) -> None:
        self.directory = key
        self._released = False

    def release(self) -> None:
        """Stop using the directory; the last user of the process unlocks it. Idempotent."""
        if self._released:
            return
        self._released = True
        with _held_guard:
            held = _held.get(self.directory)
            if held is None or held[0] != os.getpid():
                return
            pid, fd, users = held
            if users > 1:
                _held[self.directory] = (pid, fd, users - 1)
                return
            del _held[self.directory]
        if fd >= 0:
            os.close(fd)  # closing the descriptor drops the flock


def lock_storage(storage_dir: Path) -> StorageLease:
    """Take ``storage_dir`` (created if missing) for this process.

    The memory-mode buses of one process share the directory (a count of users); another
    process that holds it makes this raise :class:`BusError` naming the directory. The lock
    is an advisory ``flock`` on the directory itself, so no file is added to it, and the
    system drops it when the process dies.
    """
    try:
        storage_dir.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(storage_dir)
    except OSError as exc:
        raise BusError(f"storage_dir {str(storage_dir)!r} cannot be used: {exc}") from exc
    with _held_guard:
        held = _held.get(key)
        if held is not None and held[0] == os.getpid():
            _held[key] = (held[0], held[1], held[2] + 1)
            return StorageLease(key)
        if held is not None:  # inherited through fork: the parent's lock, not ours
            del _held[key]
            with contextlib.suppress(OSError):
                os.close(held[1])
        _held[key] = (os.getpid(), _flock(key), 1)
        return StorageLease(key)


def _flock(key: str) -> int:
    """An open descriptor of directory ``key`` holding its exclusive flock (-1 on Windows,
    which has no flock: there the directory is not guarded)."""
    if sys.platform == "win32":
        return -1
    try:
        fd = os.open(key, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        raise BusError(f"storage_dir {key!r} cannot be used: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BusError(
            f"storage_dir {key!r} is in use by another process: memory-mode queues are "
            "saved there by one process at a time (give each process its own storage_dir)"
        ) from None
    except OSError as exc:
        os.close(fd)
        raise BusError(f"storage_dir {key!r} cannot be locked: {exc}") from exc
    return fd

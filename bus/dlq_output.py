"""What ``clusterbus dlq`` prints: the table of ``list``, the page of ``show`` and the JSON of
both.

Every text from the wire (ids, error texts, tracebacks, payloads) may have been forged by a
peer: it is printed literally (never read as markup: see :mod:`bus.terminal`) and its control
characters are escaped (:func:`shown`), so an ANSI escape in an error text shows as ``\\x1b``
instead of recolouring or rewriting the terminal. JSON is pure ASCII.
"""

from __future__ import annotations

import base64
import json
import math
import sys
import time
from datetime import UTC, datetime
from typing import Any

from bus.terminal import Terminal
from bus.terminal import escaped as shown
from managers.queue_messages import DeadLetter

HEADERS = ["id", "attempts", "error_type", "error", "failed_at", "age"]
"""The columns of ``clusterbus dlq list``."""
ERROR_WIDTH = 100
"""The error column shows the first line of the error text, cut to this many characters."""
HEX_DUMP_BYTES = 16 * 1024
"""``show`` dumps at most this many bytes of a raw payload (``--json`` carries all of it)."""
MAX_DEPTH = 100
"""Containers of a payload nested deeper than this are shown as a short repr."""


def age(failed_at: float, now: float) -> str:
    """How long ago ``failed_at`` was, short (``?`` when not known)."""
    if not failed_at:
        return "?"
    seconds = max(0.0, now - failed_at)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


def iso_time(epoch: float, timespec: str = "seconds") -> str | None:
    """``epoch`` as an ISO 8601 UTC time (``2024-05-01T12:00:00+00:00``); None when unknown."""
    if not epoch or not math.isfinite(epoch):
        return None
    try:
        return datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec=timespec)
    except (OverflowError, OSError, ValueError):  # out of the platform's range
        return None


def first_line(text: str, width: int = ERROR_WIDTH) -> str:
    """The first line of ``text``, cut to ``width`` characters (``...`` when cut or when
    more lines follow)."""
    lines = text.splitlines() or [""]
    line = lines[0]
    if len(line) > width:
        return line[: width - 3] + "..."
    return line + (" ..." if len(lines) > 1 else "")


# list ------------------------------------------------------------------------------------


def print_table(
    terminal: Terminal, channel: str, letters: list[DeadLetter], *, total: int | None = None
) -> None:
    """The table of ``letters`` (id, attempts, error type, error, failed at, age), titled with
    ``total`` (default: how many are shown); data printed literally, escapes escaped."""
    now = time.time()
    rows = [
        [
            shown(letter.id),
            shown(letter.attempts),
            shown(letter.error_type),
            shown(first_line(letter.error)),
            iso_time(letter.failed_at) or "?",
            age(letter.failed_at, now),
        ]
        for letter in letters
    ]
    count = len(letters) if total is None else total
    terminal.table(shown(f"dead letters of {channel!r} ({count})"), HEADERS, rows)


def not_shown_line(hidden: int, limit: int) -> str:
    """What ``list`` says when ``--limit`` left letters out."""
    return f"{hidden} more dead letter(s) not shown (--limit {limit}; --limit 0 shows all)"


# JSON ------------------------------------------------------------------------------------


def jsonable(value: object, depth: int = 0) -> Any:
    """``value`` (a decoded payload) as JSON can carry it: bytes as ``{"base64": ...}``,
    tuples as lists, a non-finite float or anything else JSON has no type for as its repr,
    map keys that JSON cannot key by as their repr; nesting beyond :data:`MAX_DEPTH` cut."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    if depth >= MAX_DEPTH and isinstance(value, (list, tuple, dict)):
        return f"<{type(value).__name__} nested deeper than {MAX_DEPTH} levels>"
    if isinstance(value, (list, tuple)):
        return [jsonable(item, depth + 1) for item in value]
    if isinstance(value, dict):
        return {_key(key): jsonable(item, depth + 1) for key, item in value.items()}
    return _repr(value)


def _key(key: object) -> str | int | float | bool | None:
    if key is None or isinstance(key, (str, int, bool)):
        return key
    if isinstance(key, float) and math.isfinite(key):
        return key
    return _repr(key)


def _repr(value: object) -> str:
    try:
        return repr(value)
    except Exception:  # a repr that fails: the type is enough
        return f"<{type(value).__name__}>"


def letter_json(letter: DeadLetter) -> dict[str, Any]:
    """``letter`` as a JSON object (``failed_at`` an ISO 8601 UTC time, or null)."""
    return {
        "id": letter.id,
        "attempts": letter.attempts,
        "error": letter.error,
        "error_type": letter.error_type,
        "failed_by": letter.failed_by,
        "failed_at": iso_time(letter.failed_at, "milliseconds"),
        "trace_id": letter.trace_id,
        "message": jsonable(letter.message),
        "traceback": letter.traceback,
    }


def dumps(value: object) -> str:
    """``value`` as JSON in pure ASCII, control characters (DEL too) escaped."""
    return json.dumps(value, ensure_ascii=True, allow_nan=False).replace("\x7f", "\\u007f")


def print_json(terminal: Terminal, value: object) -> None:
    """``value`` as one line of JSON on the terminal's file, nothing else."""
    print(dumps(value), file=terminal.file, flush=True)


def note(text: str) -> None:
    """A remark that must not mix with JSON on stdout: on stderr."""
    print(shown(text), file=sys.stderr, flush=True)


# show ------------------------------------------------------------------------------------


def payload_text(message: object) -> str:
    """The payload pretty-printed: indented JSON when it decoded to something, a hex dump
    (offset, bytes, ASCII) of raw bytes."""
    if isinstance(message, (bytes, bytearray, memoryview)):
        return hex_dump(bytes(message))
    return json.dumps(jsonable(message), indent=2, ensure_ascii=False, allow_nan=False)


def hex_dump(data: bytes, limit: int = HEX_DUMP_BYTES) -> str:
    """``data`` as lines of 16 bytes: offset, hex, printable ASCII (the rest as ``.``)."""
    lines = [f"{len(data)} byte(s) (raw: not decodable, or a bytes payload)"]
    for offset in range(0, min(len(data), limit), 16):
        chunk = data[offset : offset + 16]
        hexes = " ".join(f"{byte:02x}" for byte in chunk)
        text = "".join(chr(byte) if 0x20 <= byte < 0x7F else "." for byte in chunk)
        lines.append(f"{offset:08x}  {hexes:<47}  |{text}|")
    if len(data) > limit:
        lines.append(f"... {len(data) - limit} more byte(s) (--json carries all, in base64)")
    return "\n".join(lines)


def _field(name: str, value: object) -> str:
    """``name: value``, the value's further lines indented under its first."""
    pad = " " * 13
    lines = str(value).splitlines() or [""]
    return f"{name + ':':<13}" + f"\n{pad}".join(lines)


def print_letter(terminal: Terminal, letter: DeadLetter, *, app: str) -> None:
    """The page of ``show``: the payload, the dead letter's headers, then its traceback."""
    now = time.time()
    failed_at = iso_time(letter.failed_at)
    when = "?" if failed_at is None else f"{failed_at} ({age(letter.failed_at, now)} ago)"
    terminal.print(
        shown(f"dead letter {letter.id!r} of {letter.channel!r} (app {app!r})"), style="bold"
    )
    terminal.print("payload:", style="bold")
    terminal.print(shown(payload_text(letter.message)))
    terminal.print("headers:", style="bold")
    fields = [
        ("id", letter.id),
        ("attempts", letter.attempts),
        ("error_type", letter.error_type or "-"),
        ("error", letter.error),
        ("failed_by", letter.failed_by or "?"),
        ("failed_at", when),
        ("trace_id", letter.trace_id or "-"),
    ]
    terminal.print("\n".join(shown(_field(name, value)) for name, value in fields))
    terminal.print("traceback:", style="bold")
    terminal.print(
        shown(letter.traceback.rstrip("\n"))
        if letter.traceback.strip()
        else "(none: parked without running, e.g. undecodable, or its handler left none)"
    )

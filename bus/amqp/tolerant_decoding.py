"""Tolerant decoding of AMQP message properties: a narrow patch of pamqp, installed on import.

Why. pamqp (the frame codec under aiormq and aio-pika) raises while decoding a content header
whose properties it cannot represent, and aiormq's frame reader turns that into
``InvalidFrameError`` and closes the whole connection. With a robust connection the broker
then redelivers the same unacked message after the reconnect, and the connection crash-loops
forever (issue 10, finding 3); every publish of the bus fails meanwhile. Any peer on the
broker can send such a message, and RabbitMQ (3.10 checked) passes it on unchanged:

- a ``timestamp`` property or ``T`` table value of 2**63-1: ``datetime.fromtimestamp`` raises
  ``ValueError: year 292278994 is out of range`` (pamqp divides values above 2**32 by 1000
  and still lands past year 9999);
- invalid UTF-8 in a short string (``message_id``, ``content_type``, ``app_id``...) or in a
  table key: ``UnicodeDecodeError``;
- headers nested a few hundred tables or arrays deep: ``RecursionError``, which neither
  pamqp nor aiormq catches.

What changes (process-wide: every user of pamqp in the process decodes the same way):

- an out-of-range timestamp decodes as None;
- a short string or table key that is not UTF-8 decodes with U+FFFD replacements;
- a table or array nested deeper than :data:`MAX_DEPTH` decodes as None (its length is
  known, so the rest of the frame still decodes); a table field of an unknown type ends its
  table (RabbitMQ refuses those on publish, but another broker may not);
- basic properties that still fail to decode, for any reason, are all dropped: the message
  is delivered with its body and no properties but the marker below (the frame's body size
  is decoded before the properties, so the connection stays in step);
- a content header whose property flags cannot be decoded keeps its body size (so the body
  frames that follow are read) and gets no properties;
- a ``delivery_mode`` other than 1 or 2, or an ``expiration`` that is not a number of
  milliseconds (aio-pika's ``IncomingMessage`` raises on both, and the delivery then stays
  unacked, holding a prefetch slot, forever), decodes as None.

Every repair made while decoding a message's properties is named in the header
:data:`MALFORMED_HEADER` of those properties; :func:`bus.amqp.envelopes.to_envelope` turns it
into a :class:`bus.codec.MalformedBody`, so the consumer drops (pub/sub) or parks (event
queue) the message with the reason, as it does any undecodable body. Frames that are
truncated or inconsistent raise exactly as before.

Checked against pamqp 4.0.1 (``decode.METHODS``, ``decode.TABLE_MAPPING``,
``base.BasicProperties.unmarshal``, ``header.ContentHeader.unmarshal``), aiormq 7.2.4
(``connection.FrameReceiver.get_frame`` closes the connection on any decode error) and
aio-pika 10.2.1 (``message.IncomingMessage``).
:func:`install` checks that those hooks are still what it expects and leaves pamqp alone
(with a warning) when they are not; re-check this module on every upgrade of pamqp.

Upstream: the timestamp crash is known in aiormq (mosquito/aiormq#186, "year 55675 is out of
range", open since 2023); pamqp declined millisecond timestamps as a protocol violation
(gmr/pamqp#35) and later divides values above 2**32 by 1000, which does not cover values past
year 9999; pika fixed the same bug in 2026 (pika/pika#1698, #1699). No pamqp issue covers the
out-of-range case: the report to file is ``docs/upstream/pamqp-timestamp.md``.
"""

from __future__ import annotations

import datetime
import struct
import threading
from collections.abc import Callable
from typing import Any

from pamqp import base, commands, common, decode, header

from bus.logs import get_logger

__all__ = ["MALFORMED_HEADER", "MAX_DEPTH", "install", "installed"]

MALFORMED_HEADER = "x-clusterbus-malformed"
"""Header added to decoded properties that needed a repair; its value says which."""

MAX_DEPTH = 64
"""Tables and arrays nested deeper than this in a header decode as None."""

_MAX_REASON_CHARS = 500

_log = get_logger("clusterbus.amqp")

Decoder = Callable[[bytes], tuple[int, Any]]


class _State(threading.local):
    """What the decoding in progress on this thread noticed (decoding is synchronous)."""

    def __init__(self) -> None:
        self.depth = 0
        self.problems: list[str] | None = None


_state = _State()
_original: dict[str, Any] = {}


def _note(problem: str) -> None:
    if _state.problems is not None and problem not in _state.problems:
        _state.problems.append(problem)


def _timestamp(value: bytes) -> tuple[int, datetime.datetime | None]:
    """pamqp's timestamp decoder; an out-of-range value decodes as None."""
    if len(value) < 8:  # truncated: pamqp's own error
        result: tuple[int, datetime.datetime | None] = _original["timestamp"](value)
        return result
    try:
        result = _original["timestamp"](value)
    except (ValueError, OverflowError, OSError):
        raw = common.Struct.timestamp.unpack(value[0:8])[0]
        _note(f"timestamp {raw} is out of range")
        return 8, None
    return result


def _short_str(value: bytes) -> tuple[int, str]:
    """pamqp's short string decoder; invalid UTF-8 is replaced (U+FFFD)."""
    try:
        result: tuple[int, str] = _original["short_str"](value)
    except UnicodeDecodeError:
        length = value[0]
        _note("a short string is not UTF-8")
        return length + 1, value[1 : length + 1].decode("utf-8", "replace")
    return result


def _length(value: bytes, what: str) -> int:
    try:
        length: int = common.Struct.integer.unpack(value[0:4])[0]
    except struct.error as err:
        raise ValueError(f"Could not unpack {what}") from err
    if length + 4 > len(value):
        raise ValueError(f"{what} length exceeds available data")
    return length


def _field_table(value: bytes) -> tuple[int, common.FieldTable | None]:
    """pamqp's field table decoder, bounded in depth, with keys decoded leniently and an
    unknown field type ending the table instead of the frame."""
    end = 4 + _length(value, "field table")
    if _state.depth >= MAX_DEPTH:
        _note(f"headers nested deeper than {MAX_DEPTH} levels")
        return end, None
    data: common.FieldTable = {}
    offset = 4
    _state.depth += 1
    try:
        while offset < end:
            key_length = value[offset]
            offset += 1
            if offset + key_length > end:
                raise ValueError("Field table key length exceeds data")
            raw_key = value[offset : offset + key_length]
            offset += key_length
            try:
                key = raw_key.decode("utf-8")
            except UnicodeDecodeError:
                _note("a header name is not UTF-8")
                key = raw_key.decode("utf-8", "replace")
            try:
                consumed, result = decode.embedded_value(value[offset:end])
            except ValueError as exc:
                _note(f"header {key!r}: {exc}")
                break
            offset += consumed
            data[key] = result
    finally:
        _state.depth -= 1
    return end, data


def _field_array(value: bytes) -> tuple[int, common.FieldArray | None]:
    """pamqp's field array decoder, bounded in depth like :func:`_field_table`."""
    end = 4 + _length(value, "field array")
    if _state.depth >= MAX_DEPTH:
        _note(f"headers nested deeper than {MAX_DEPTH} levels")
        return end, None
    data: common.FieldArray = []
    offset = 4
    _state.depth += 1
    try:
        while offset < end:
            try:
                consumed, result = decode.embedded_value(value[offset:end])
            except ValueError as exc:
                _note(f"array item: {exc}")
                break
            offset += consumed
            data.append(result)
    finally:
        _state.depth -= 1
    return end, data


def _unmarshal_properties(self: base.BasicProperties, flags: int, data: bytes) -> None:
    """``BasicProperties.unmarshal`` that never raises: repairs are named in
    :data:`MALFORMED_HEADER`; properties that cannot be decoded at all are dropped."""
    outer = _state.problems
    problems: list[str] = []
    _state.problems, depth, _state.depth = problems, _state.depth, 0
    try:
        _original["unmarshal"](self, flags, data)
    except Exception as exc:  # whatever a peer sent: keep the connection
        for name in self.__slots__:
            setattr(self, name, "" if name == "cluster_id" else None)
        problems.append(f"undecodable properties: {type(exc).__name__}: {exc}")
    finally:
        _state.problems, _state.depth = outer, depth
    delivery_mode = getattr(self, "delivery_mode", None)
    if delivery_mode is not None and delivery_mode not in (1, 2):
        problems.append(f"delivery_mode {delivery_mode} is not 1 or 2")
        setattr(self, "delivery_mode", None)  # noqa: B010 (not an attribute of the base)
    expiration = getattr(self, "expiration", None)
    if expiration is not None and not (expiration.isascii() and expiration.isdigit()):
        problems.append(f"expiration {expiration[:40]!r} is not a number of milliseconds")
        setattr(self, "expiration", None)  # noqa: B010
    if problems:
        reason = "; ".join(problems)[:_MAX_REASON_CHARS]
        headers = getattr(self, "headers", None)
        headers = headers if isinstance(headers, dict) else {}
        setattr(self, "headers", {**headers, MALFORMED_HEADER: reason})  # noqa: B010


def _unmarshal_header(self: header.ContentHeader, data: bytes) -> None:
    """``ContentHeader.unmarshal`` that keeps the body size (so that the body frames that
    follow are read) when the property flags cannot be decoded: the message then has no
    properties but :data:`MALFORMED_HEADER`."""
    try:
        _original["header"](self, data)
    except Exception as exc:
        if len(data) < 12:  # no body size: a broken frame, not a bad property
            raise
        self.class_id, self.weight, self.body_size = struct.unpack(">HHQ", data[0:12])
        reason = f"undecodable content header: {type(exc).__name__}: {exc}"
        self.properties = commands.Basic.Properties(
            headers={MALFORMED_HEADER: reason[:_MAX_REASON_CHARS]}
        )


def installed() -> bool:
    """True when the patch is in place."""
    return (
        base.BasicProperties.unmarshal is _unmarshal_properties
        and header.ContentHeader.unmarshal is _unmarshal_header
    )


def install() -> bool:
    """Install the patch (idempotent); False, with a warning, when pamqp is not the one this
    module was checked against."""
    if installed():
        return True
    expected = (
        decode.METHODS.get("timestamp") is decode.timestamp
        and decode.METHODS.get("shortstr") is decode.short_str
        and decode.METHODS.get("table") is decode.field_table
        and decode.TABLE_MAPPING.get(b"T") is decode.timestamp
        and decode.TABLE_MAPPING.get(b"F") is decode.field_table
        and decode.TABLE_MAPPING.get(b"A") is decode.field_array
        and callable(getattr(decode, "embedded_value", None))
        and "unmarshal" in vars(base.BasicProperties)
        and "unmarshal" in vars(header.ContentHeader)
    )
    if not expected:
        _log.warning(
            "amqp.tolerant_decoding_skipped",
            reason="pamqp's decoders are not the ones this patch was checked against",
        )
        return False
    _original.update(
        timestamp=decode.timestamp,
        short_str=decode.short_str,
        unmarshal=base.BasicProperties.unmarshal,
        header=header.ContentHeader.unmarshal,
    )
    decode.METHODS["timestamp"] = _timestamp
    decode.METHODS["shortstr"] = _short_str
    decode.METHODS["table"] = _field_table
    decode.METHODS["array"] = _field_array
    decode.TABLE_MAPPING[b"T"] = _timestamp
    decode.TABLE_MAPPING[b"F"] = _field_table
    decode.TABLE_MAPPING[b"A"] = _field_array
    base.BasicProperties.unmarshal = _unmarshal_properties  # type: ignore[method-assign]
    header.ContentHeader.unmarshal = _unmarshal_header  # type: ignore[method-assign]
    return True


install()

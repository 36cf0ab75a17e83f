"""Publish raw AMQP messages with arbitrary properties and headers.

A peer on the broker can put anything on the wire, including values no client library would
encode: a timestamp of 2**63-1, invalid UTF-8 in a short string, an unknown field type in the
headers table, tables nested thousands deep, a delivery mode of 7. aio-pika's ``Message``
refuses most of these, so this helper encodes the content header itself and hands aiormq the
bytes (a :class:`RawProperties` whose ``marshal()`` returns them); the method and body frames
are aiormq's own. The broker is real and nothing is mocked.

Usage::

    async with Injector(amqp_url) as inject:
        await inject.publish(
            routing_key="crm.queue.jobs",
            body=b"\\x91\\x01",
            properties={"timestamp": 2**63 - 1, "message_id": "evil"},
            headers={"x-attempt": float("nan")},
        )

Values, by AMQP property type (see :data:`PROPERTY_TYPES`):

- short strings (``message_id``, ``content_type``, ``app_id``...): ``str`` (encoded as UTF-8,
  lone surrogates kept as their invalid 3-byte forms) or ``bytes`` (sent verbatim, so invalid
  UTF-8 is possible); at most 255 bytes.
- octets (``delivery_mode``, ``priority``): ``int`` in 0..255.
- ``timestamp``: ``int`` seconds, any unsigned 64-bit value (2**63-1 included), a
  :class:`~datetime.datetime`, or :class:`Timestamp`.
- ``headers``: a mapping, encoded by :func:`encode_table` (see :func:`encode_field` for what
  a value may be).

Any property value may also be :class:`Raw`: its bytes are the property's encoding, verbatim.
"""

from __future__ import annotations

import datetime
import decimal
import struct
import types
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiormq
from pamqp import commands

__all__ = [
    "PROPERTY_TYPES",
    "Injector",
    "Raw",
    "RawField",
    "RawProperties",
    "Timestamp",
    "encode_field",
    "encode_properties",
    "encode_table",
    "inject",
    "nested_field",
]

PROPERTY_TYPES: Mapping[str, str] = types.MappingProxyType(
    {
        name: getattr(commands.Basic.Properties, "_" + name)
        for name in commands.Basic.Properties.__slots__
    }
)
"""Each basic property (in wire order) and its AMQP type: ``shortstr``, ``octet``,
``timestamp`` or ``table``. ``type`` is accepted as an alias of ``message_type``."""

_FLAGS: Mapping[str, int] = commands.Basic.Properties.flags


@dataclass(frozen=True, slots=True)
class Raw:
    """Bytes sent verbatim: as a property, its whole encoding (length prefix included); as a
    table value, the field's type code and payload."""

    data: bytes


@dataclass(frozen=True, slots=True)
class RawField:
    """A table field with any type ``code`` (one byte, known or not) and ``payload``."""

    code: bytes
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class Timestamp:
    """An AMQP timestamp of any unsigned 64-bit value, e.g. ``Timestamp(2**63 - 1)``."""

    value: int


def _short(value: str | bytes) -> bytes:
    raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(value)
    if len(raw) > 255:
        raise ValueError(f"short string of {len(raw)} bytes (at most 255)")
    return struct.pack(">B", len(raw)) + raw


def _long(raw: bytes) -> bytes:
    return struct.pack(">I", len(raw)) + raw


def _timestamp(value: object) -> bytes:
    if isinstance(value, Timestamp):
        value = value.value
    if isinstance(value, datetime.datetime):
        value = int(value.timestamp())
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"timestamp must be an int, datetime or Timestamp, not {value!r}")
    return struct.pack(">Q", value)


def encode_field(value: object) -> bytes:
    """A table field value (type code included).

    ``bool`` (``t``), ``int`` (``l``, signed 64-bit), ``float`` (``d``: NaN and infinities
    included), ``str`` (``S``, lone surrogates kept), ``bytes`` (``x``), ``None`` (``V``),
    ``Decimal`` (``D``), ``datetime`` or :class:`Timestamp` (``T``), a mapping (``F``), a list
    or tuple (``A``), :class:`RawField` (any type code) and :class:`Raw` (verbatim).
    """
    result: bytes
    match value:
        case Raw(data=data):
            result = data
        case RawField(code=code, payload=payload):
            result = code + payload
        case bool():
            result = b"t" + struct.pack(">B", int(value))
        case int():
            result = b"l" + struct.pack(">q", value)
        case float():
            result = b"d" + struct.pack(">d", value)
        case str():
            result = b"S" + _long(value.encode("utf-8", "surrogatepass"))
        case bytes() | bytearray():
            result = b"x" + _long(bytes(value))
        case None:
            result = b"V"
        case decimal.Decimal():
            sign, digits, exponent = value.as_tuple()
            assert isinstance(exponent, int)
            number = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
            result = b"D" + struct.pack(">Bi", max(0, -exponent), number)
        case datetime.datetime() | Timestamp():
            result = b"T" + _timestamp(value)
        case Mapping():
            result = b"F" + encode_table(value)
        case list() | tuple():
            result = b"A" + _long(b"".join(encode_field(item) for item in value))
        case _:
            raise TypeError(f"cannot encode {type(value).__name__} as a table field")
    return result


def encode_table(mapping: Mapping[Any, object]) -> bytes:
    """A field table (length prefix included). Keys: ``str`` (lone surrogates kept) or
    ``bytes`` (verbatim, so invalid UTF-8 is possible)."""
    parts = [_short(key) + encode_field(value) for key, value in mapping.items()]
    return _long(b"".join(parts))


def nested_field(depth: int, *, kind: str = "table") -> RawField:
    """A table (``kind="table"``) or array (``kind="array"``) nested ``depth`` levels deep,
    built without recursion (so any depth that fits in a frame can be sent)."""
    payload = _long(b"")
    for _ in range(depth):
        entry = b"\x01kF" + payload if kind == "table" else b"A" + payload
        payload = _long(entry)
    return RawField(b"F" if kind == "table" else b"A", payload)


def _property(name: str, value: object) -> bytes:
    if isinstance(value, Raw):
        return value.data
    kind = PROPERTY_TYPES[name]
    if kind == "shortstr":
        if not isinstance(value, (str, bytes)):
            raise TypeError(f"{name} must be str or bytes, not {value!r}")
        return _short(value)
    if kind == "octet":
        if not isinstance(value, int):
            raise TypeError(f"{name} must be an int, not {value!r}")
        return struct.pack(">B", value)
    if kind == "timestamp":
        return _timestamp(value)
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping, not {value!r}")
    return encode_table(value)


def encode_properties(properties: Mapping[str, object]) -> bytes:
    """The basic-properties part of a content header: property flags, then each given
    property's value in wire order. A value of None leaves the property out."""
    given = {("message_type" if k == "type" else k): v for k, v in properties.items()}
    unknown = set(given) - set(PROPERTY_TYPES)
    if unknown:
        raise ValueError(f"unknown properties {sorted(unknown)}; known: {list(PROPERTY_TYPES)}")
    flags = 0
    parts: list[bytes] = []
    for name in PROPERTY_TYPES:
        value = given.get(name)
        if value is None:
            continue
        flags |= _FLAGS[name]
        parts.append(_property(name, value))
    return struct.pack(">H", flags) + b"".join(parts)


class RawProperties(commands.Basic.Properties):
    """Basic properties that marshal to pre-encoded bytes (aiormq writes them as they are).

    ``message_id`` is only aiormq's book-keeping for publisher confirms; what travels is
    ``encoded``.
    """

    def __init__(self, encoded: bytes) -> None:
        super().__init__(message_id=uuid.uuid4().hex)
        self.encoded = encoded

    def marshal(self) -> bytes:
        """The pre-encoded properties."""
        return self.encoded


class Injector:
    """A raw publisher on its own aiormq connection, with publisher confirms.

    ``async with Injector(url) as inject: await inject.publish(...)``; or call
    :meth:`connect` and :meth:`close` yourself.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._connection: aiormq.abc.AbstractConnection | None = None
        self._channel: aiormq.abc.AbstractChannel | None = None

    async def connect(self) -> None:
        """Open the connection and a confirming channel."""
        self._connection = await aiormq.connect(self.url)
        self._channel = await self._connection.channel(publisher_confirms=True)

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            await connection.close()

    async def __aenter__(self) -> Injector:
        await self.connect()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def publish(
        self,
        *,
        routing_key: str,
        body: bytes = b"",
        exchange: str = "",
        properties: Mapping[str, object] | None = None,
        headers: Mapping[Any, object] | Raw | None = None,
        mandatory: bool = False,
    ) -> None:
        """Publish ``body`` with exactly these ``properties`` (and ``headers``, merged into
        them) and wait for the broker's confirm. Nothing is added: no message id, no delivery
        mode unless given.

        ``mandatory`` is off by default: the broker would return an unroutable message with
        its (possibly poisonous) properties to this connection, whose client may fail to
        decode them. Declare the target queue first (or check it with ``rabbitmqctl``).
        """
        if self._channel is None:
            raise RuntimeError("Injector is not connected")
        given = dict(properties or {})
        if headers is not None:
            given["headers"] = headers
        confirmation = await self._channel.basic_publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            properties=RawProperties(encode_properties(given)),
            mandatory=mandatory,
        )
        if isinstance(confirmation, aiormq.spec.Basic.Ack):
            return
        raise RuntimeError(f"the broker did not confirm the raw message: {confirmation!r}")


async def inject(url: str, **publish: Any) -> None:
    """Publish one raw message on a connection of its own (arguments: :meth:`Injector.publish`)."""
    async with Injector(url) as injector:
        await injector.publish(**publish)

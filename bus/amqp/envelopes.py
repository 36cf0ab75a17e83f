"""Envelopes to AMQP messages and back (queue and pub/sub messages alike)."""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from bus.amqp.tolerant_decoding import MALFORMED_HEADER
from bus.codec import CONTENT_TYPE, MalformedBody
from managers.envelope import HEADER_SENDER, HEADER_TRACE_ID, Envelope

# Ids and names read from a message are cut to this many characters (AMQP short strings hold
# at most 255 bytes; a header can be far longer).
_MAX_TEXT = 1024


def to_message(envelope: Envelope, app: str, *, persistent: bool = True) -> aio_pika.Message:
    """The AMQP message of ``envelope`` (persistent unless told otherwise)."""
    return aio_pika.Message(
        envelope.body,
        message_id=envelope.message_id,
        content_type=CONTENT_TYPE,
        timestamp=envelope.timestamp,
        app_id=app,
        delivery_mode=(
            aio_pika.DeliveryMode.PERSISTENT if persistent else aio_pika.DeliveryMode.NOT_PERSISTENT
        ),
        headers={
            HEADER_SENDER: envelope.sender,
            HEADER_TRACE_ID: envelope.trace_id,
            **envelope.headers,
        },
    )


def to_envelope(message: AbstractIncomingMessage) -> Envelope:
    """The envelope of a delivered AMQP message (its headers are read, never changed: a
    forwarded envelope gets new ones).

    Never raises, whatever a peer put in the properties: a missing or odd message id, sender
    or trace id becomes text ("" when absent), an odd timestamp 0.0. A message whose
    properties needed a repair to decode (see :mod:`bus.amqp.tolerant_decoding`) gets a
    :class:`~bus.codec.MalformedBody`, so that the consumer drops or parks it with the reason.
    """
    raw_headers = message.headers
    headers: Mapping[str, Any] = raw_headers if isinstance(raw_headers, Mapping) else {}
    body = message.body
    problem = headers.get(MALFORMED_HEADER)
    if problem is not None:
        headers = {k: v for k, v in headers.items() if k != MALFORMED_HEADER}
        body = MalformedBody(body, _text(problem) or "malformed properties")
    return Envelope(
        body=body,
        message_id=_text(message.message_id),
        sender=_text(headers.get(HEADER_SENDER)),
        trace_id=_text(headers.get(HEADER_TRACE_ID)),
        timestamp=_epoch(message.timestamp),
        headers=headers,
    )


def _text(value: object) -> str:
    """A property or header as text: "" when absent, bytes decoded (invalid UTF-8 replaced),
    anything else as its ``str``, lone surrogates replaced (logs and headers must encode)."""
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value[:_MAX_TEXT]).decode("utf-8", "replace")
    text = value if isinstance(value, str) else str(value)
    text = text[:_MAX_TEXT]
    if text.isascii():
        return text
    return text.encode("utf-8", "replace").decode("utf-8")


def _epoch(value: object) -> float:
    """A timestamp property as epoch seconds; 0.0 when absent or not a usable time."""
    if isinstance(value, datetime.datetime):
        try:
            seconds = value.timestamp()
        except (OverflowError, OSError, ValueError):
            return 0.0
        return seconds if math.isfinite(seconds) else 0.0
    return 0.0

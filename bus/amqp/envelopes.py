"""Envelopes to AMQP messages and back (queue and pub/sub messages alike)."""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from bus.codec import CONTENT_TYPE
from managers.envelope import HEADER_SENDER, HEADER_TRACE_ID, Envelope


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
    forwarded envelope gets new ones)."""
    headers = message.headers
    timestamp = message.timestamp
    return Envelope(
        body=message.body,
        message_id=message.message_id or "",
        sender=str(headers.get(HEADER_SENDER, "")),
        trace_id=str(headers.get(HEADER_TRACE_ID, "")),
        timestamp=timestamp.timestamp() if timestamp is not None else 0.0,
        headers=headers,
    )

"""Property tests of the AMQP properties a peer can send (decoded by pamqp with
:mod:`bus.amqp.tolerant_decoding`) and of the envelope made of them: no frame with a
well-formed length fails to decode, and every envelope is usable (text ids, a finite
timestamp, sane queue headers); a message whose properties needed a repair is refused by the
codec with the reason."""

from __future__ import annotations

import datetime
import math
import struct
from decimal import Decimal
from typing import Any, cast

import aio_pika
import pytest
from aiormq.abc import DeliveredMessage
from hypothesis import given
from hypothesis import strategies as st
from pamqp import commands, constants, frame, header

from bus.amqp import tolerant_decoding
from bus.amqp.envelopes import to_envelope
from bus.codec import MalformedBody
from bus.errors import PayloadError
from managers.envelope import Envelope
from managers.queue_messages import HEADER_ATTEMPT, HEADER_TIMEOUT, QueueHeaders
from tests.faults.inject import RawField, Timestamp, encode_properties, nested_field
from tests.unit.test_wire_properties import PROPERTY_SETTINGS, any_text, assert_sane, codec

# AMQP properties and envelopes ---------------------------------------------------------

short_strings = st.binary(max_size=40) | any_text
table_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | any_text
    | st.binary(max_size=8)
    | st.builds(Timestamp, st.integers(0, 2**64 - 1))
    | st.builds(RawField, st.binary(min_size=1, max_size=1), st.binary(max_size=12))
    | st.builds(nested_field, st.integers(0, 300), kind=st.sampled_from(["table", "array"])),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.binary(max_size=6) | any_text, inner, max_size=3)
    ),
    max_leaves=10,
)
tables = st.dictionaries(
    st.sampled_from(["x-sender", "x-trace-id", HEADER_ATTEMPT, HEADER_TIMEOUT])
    | st.binary(max_size=6)
    | any_text,
    table_values,
    max_size=5,
)
properties = st.fixed_dictionaries(
    {},
    optional={
        "content_type": short_strings,
        "content_encoding": short_strings,
        "headers": tables,
        "delivery_mode": st.integers(0, 255),
        "priority": st.integers(0, 255),
        "correlation_id": short_strings,
        "reply_to": short_strings,
        "expiration": short_strings,
        "message_id": short_strings,
        "timestamp": st.integers(0, 2**64 - 1),
        "type": short_strings,
        "user_id": short_strings,
        "app_id": short_strings,
    },
)


def header_frame(encoded_properties: bytes, body_size: int = 3) -> bytes:
    """A content header frame as it arrives from the broker."""
    payload = struct.pack(">HHQ", 60, 0, body_size) + encoded_properties
    return (
        struct.pack(">BHI", constants.FRAME_HEADER, 1, len(payload))
        + payload
        + bytes([constants.FRAME_END])
    )


def delivered(content: header.ContentHeader, body: bytes = b"abc") -> aio_pika.IncomingMessage:
    """What aio-pika makes of a delivery with this content header."""
    deliver = commands.Basic.Deliver(consumer_tag="c", delivery_tag=1, routing_key="q")
    return aio_pika.IncomingMessage(
        DeliveredMessage(delivery=deliver, header=content, body=body, channel=cast(Any, None))
    )


def assert_usable(envelope: Envelope) -> None:
    for text in (envelope.message_id, envelope.sender, envelope.trace_id):
        assert isinstance(text, str)
        text.encode("utf-8")  # loggable and sendable again: no lone surrogates
    assert isinstance(envelope.timestamp, float) and math.isfinite(envelope.timestamp)
    assert isinstance(envelope.body, bytes)
    assert_sane(QueueHeaders.read(envelope.headers, 15.0))


def test_the_tolerant_decoding_is_installed_with_the_amqp_backend() -> None:
    assert tolerant_decoding.installed()
    assert tolerant_decoding.install()  # idempotent


@PROPERTY_SETTINGS
@given(properties)
def test_arbitrary_properties_decode_and_make_a_usable_envelope(props: dict[str, Any]) -> None:
    _, _, content = frame.unmarshal(header_frame(encode_properties(props)))
    assert isinstance(content, header.ContentHeader) and content.body_size == 3
    envelope = to_envelope(delivered(content))
    assert_usable(envelope)
    assert tolerant_decoding.MALFORMED_HEADER not in envelope.headers
    if isinstance(envelope.body, MalformedBody):
        with pytest.raises(PayloadError, match="malformed AMQP properties"):
            codec.decode(envelope.body)


@PROPERTY_SETTINGS
@given(st.binary(max_size=2), st.binary(max_size=80))
def test_garbage_properties_never_break_the_frame(flags: bytes, rest: bytes) -> None:
    _, _, content = frame.unmarshal(header_frame(flags + rest, body_size=7))
    assert isinstance(content, header.ContentHeader) and content.body_size == 7
    assert_usable(to_envelope(delivered(content, b"1234567")))


@pytest.mark.parametrize(
    ("props", "reason"),
    [
        ({"timestamp": 2**63 - 1, "message_id": "m1"}, "timestamp 9223372036854775807"),
        ({"timestamp": 2**64 - 1, "message_id": "m1"}, "out of range"),
        ({"message_id": b"m1\xff"}, "short string is not UTF-8"),
        ({"content_type": b"\xc3", "message_id": "m1"}, "short string is not UTF-8"),
        ({"headers": {b"\xff": 1}, "message_id": "m1"}, "header name is not UTF-8"),
        ({"headers": {"x-t": Timestamp(2**63 - 1)}, "message_id": "m1"}, "out of range"),
        ({"headers": {"x-n": nested_field(5000)}, "message_id": "m1"}, "nested deeper"),
        ({"headers": {"x-n": nested_field(5000, kind="array")}, "message_id": "m1"}, "deeper"),
        ({"headers": {"x-u": RawField(b"Z", b"")}, "message_id": "m1"}, "Unknown type"),
        ({"delivery_mode": 7, "message_id": "m1"}, "delivery_mode 7"),
        ({"expiration": "soon", "message_id": "m1"}, "expiration 'soon'"),
    ],
)
def test_each_poisonous_property_is_repaired_and_named(props: dict[str, Any], reason: str) -> None:
    _, _, content = frame.unmarshal(header_frame(encode_properties(props)))
    assert isinstance(content, header.ContentHeader)
    envelope = to_envelope(delivered(content))
    assert_usable(envelope)
    assert envelope.message_id.startswith("m1")
    assert isinstance(envelope.body, MalformedBody) and reason in envelope.body.reason
    assert envelope.body == b"abc"


def test_a_good_message_is_left_alone() -> None:
    now = datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)
    props = {
        "message_id": "abc",
        "timestamp": now,
        "content_type": "application/msgpack",
        "headers": {"x-sender": "peer", "x-trace-id": "t1", "x-attempt": 2},
    }
    _, _, content = frame.unmarshal(header_frame(encode_properties(props)))
    assert isinstance(content, header.ContentHeader)
    envelope = to_envelope(delivered(content))
    assert type(envelope.body) is bytes
    assert (envelope.message_id, envelope.sender, envelope.trace_id) == ("abc", "peer", "t1")
    assert envelope.timestamp == now.timestamp()
    assert envelope.headers == props["headers"]


@pytest.mark.parametrize(
    "headers",
    [
        None,
        {"x-sender": b"\xff\xfe", "x-trace-id": 12},
        {"x-sender": None, "x-trace-id": ["a"]},
        {"x-sender": "\ud800", "x-trace-id": Decimal("1.5")},
    ],
)
def test_odd_sender_and_trace_headers_become_text(headers: dict[str, Any] | None) -> None:
    content = header.ContentHeader(body_size=3, properties=commands.Basic.Properties())
    content.properties.headers = headers
    envelope = to_envelope(delivered(content))
    assert_usable(envelope)
    assert envelope.message_id == ""

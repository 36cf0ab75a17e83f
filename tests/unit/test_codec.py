"""The msgpack codec: round trips, pydantic payloads, and refusals that name the channel."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from bus.codec import MsgpackCodec
from bus.errors import PayloadError

codec = MsgpackCodec(max_message_bytes=1 << 20)

msgpackable = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)


@given(msgpackable)
def test_every_msgpack_value_round_trips(value: Any) -> None:
    assert codec.decode(codec.encode(value, channel="c")) == value


class Event(BaseModel):
    name: str
    at: datetime
    tags: list[str] = []


def test_pydantic_models_travel_as_their_dump_and_validate_back() -> None:
    event = Event(name="signup", at=datetime(2026, 1, 2, 3, 4, 5), tags=["a"])
    body = codec.encode({"event": event}, channel="c")
    decoded = codec.decode(body)
    assert isinstance(decoded, dict)
    assert decoded["event"]["at"] == "2026-01-02T03:04:05"
    assert codec.validate(decoded["event"], Event) == event


@pytest.mark.parametrize(
    "payload",
    [object(), {"x": {1, 2}}, {"n": 2**70}, [datetime(2026, 1, 1)], {"f": print}],
)
def test_what_msgpack_cannot_carry_raises_naming_the_channel(payload: object) -> None:
    with pytest.raises(PayloadError, match=r"channel 'orders\.created'"):
        codec.encode(payload, channel="orders.created")
    # the packer is left clean for the next message
    assert codec.decode(codec.encode({"ok": 1}, channel="c")) == {"ok": 1}


def test_size_limit_both_ways() -> None:
    small = MsgpackCodec(max_message_bytes=10)
    with pytest.raises(PayloadError, match="max_message_bytes"):
        small.encode("x" * 20, channel="c")
    with pytest.raises(PayloadError, match="max_message_bytes"):
        small.decode(msgpack.packb("x" * 20))


@pytest.mark.parametrize("body", [b"\xc1", b"\x92\x01", b"\xa5ab", b"\x81\xa1a"])
def test_malformed_bodies_raise_payload_error(body: bytes) -> None:
    with pytest.raises(PayloadError, match="not valid msgpack"):
        codec.decode(body)


def test_validation_failure_is_a_payload_error() -> None:
    with pytest.raises(PayloadError, match="Event"):
        codec.validate({"name": 1}, Event)

"""Property tests of what is read from the wire: the codec and the queue headers (the AMQP
properties and envelopes: ``test_wire_amqp_properties``). Arbitrary input never raises
anything but ``PayloadError`` and never yields a value a consumer cannot use; a memory-mode
consumer parks a message with forged headers (with the reason) and keeps consuming."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from bus import Bus, MemoryHub
from bus.codec import MalformedBody, MsgpackCodec
from bus.errors import PayloadError
from managers.envelope import Envelope
from managers.queue_messages import (
    HEADER_ATTEMPT,
    HEADER_MAX_RETRIES,
    HEADER_NOT_BEFORE,
    HEADER_TIMEOUT,
    MAX_HEADER_COUNT,
    MAX_HEADER_DELAY,
    MAX_HEADER_TIMEOUT,
    MIN_HEADER_TIMEOUT,
    QueueContext,
    QueueHeaders,
)
from tests.conftest import eventually, fast_settings, unique_app

codec = MsgpackCodec(max_message_bytes=1 << 20)
PROPERTY_SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text with every code point, lone surrogates included (hypothesis leaves them out by default).
any_text = st.text(st.characters(exclude_categories=()), max_size=12)


class Color(str, enum.Enum):  # noqa: UP042 (str() of this mixin is "Color.RED", not "red")
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Point(BaseModel):
    x: int
    y: float


class FrozenPoint(BaseModel, frozen=True):
    x: int


# codec ---------------------------------------------------------------------------------

keys = st.one_of(
    any_text,
    st.integers(-(2**65), 2**65),
    st.none(),
    st.booleans(),
    st.floats(),
    st.binary(max_size=6),
    st.tuples(st.integers(0, 3)),
    st.frozensets(st.integers(0, 3), max_size=2),
    st.just(Color.RED),
    st.just(Level.HIGH),
)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**66), 2**66),
    st.floats(),
    any_text,
    st.binary(max_size=12),
    st.sampled_from([Color.RED, Level.HIGH, Point(x=1, y=0.5)]),
    st.sets(st.integers(0, 3), max_size=2),
    st.datetimes(),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.just(object()),
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(keys, inner, max_size=4)
    ),
    max_leaves=25,
)


def normalized(value: Any) -> Any:
    """What ``value`` decodes as: tuples as lists, enums and models as their plain values."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [normalized(v) for v in value]
    if isinstance(value, dict):
        return {normalized(k): normalized(v) for k, v in value.items()}
    return value


def has_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, (list, tuple)):
        return any(has_nan(v) for v in value)
    if isinstance(value, dict):
        return any(has_nan(k) or has_nan(v) for k, v in value.items())
    return False


@PROPERTY_SETTINGS
@given(values)
def test_a_payload_is_refused_naming_the_channel_or_round_trips(value: Any) -> None:
    try:
        body = codec.encode(value, channel="orders.created")
    except PayloadError as exc:
        assert "channel 'orders.created'" in str(exc)
        return
    decoded = codec.decode(body)  # whatever encode accepted decodes
    assert codec.encode(decoded, channel="c") == body
    if not has_nan(value):
        assert decoded == normalized(value)


@pytest.mark.parametrize(
    "payload",
    [
        {(1, 2): "x"},
        {"outer": [{"ok": 1}, {(3,): "nested"}]},
        {FrozenPoint(x=1): "a hashable model is a dict once packed"},
        {(): 1},
        ({("a", "b"): 1},),
    ],
)
def test_a_map_key_that_cannot_decode_back_is_refused_at_encode(payload: object) -> None:
    with pytest.raises(PayloadError, match=r"channel 'orders\.created'.*does not decode back"):
        codec.encode(payload, channel="orders.created")
    # the packer is clean for the next message
    assert codec.decode(codec.encode({"ok": (1, 2)}, channel="c")) == {"ok": [1, 2]}


async def test_publish_and_cache_set_refuse_a_tuple_key_naming_channel_cache_and_key() -> None:
    async with Bus(unique_app(), hub=MemoryHub(), settings=fast_settings()) as bus:
        with pytest.raises(PayloadError, match=r"channel 'jobs'"):
            await bus.queue.publish("jobs", {(1, 2): "x"})
        with pytest.raises(PayloadError, match=r"channel 'news'"):
            await bus.pubsub.publish("news", {"a": {(1,): 2}})
        with pytest.raises(PayloadError, match=r"cache 'default'.*key 'k'"):
            await bus.cache.set("k", {(1, 2): "x"})
        assert await bus.cache.get("k") is None


def test_enums_and_subclasses_travel_as_their_values() -> None:
    body = codec.encode({Color.RED: [Level.HIGH, (1, Color.RED)]}, channel="c")
    assert codec.decode(body) == {"red": [3, [1, "red"]]}


@PROPERTY_SETTINGS
@given(
    st.binary(max_size=600)
    | st.builds(lambda n, tail: b"\x91" * n + tail, st.integers(0, 5000), st.binary(max_size=4))
)
def test_decoding_arbitrary_bytes_raises_only_payload_error(body: bytes) -> None:
    with contextlib.suppress(PayloadError):
        codec.decode(body)


def test_a_malformed_body_is_refused_with_its_reason() -> None:
    body = MalformedBody(codec.encode("fine", channel="c"), "timestamp 9 is out of range")
    assert body == codec.encode("fine", channel="c")
    with pytest.raises(PayloadError, match="malformed AMQP properties: timestamp 9"):
        codec.decode(body)


# queue headers -------------------------------------------------------------------------

header_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.floats()
    | any_text
    | st.binary(max_size=8)
    | st.decimals()
    | st.datetimes(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=8,
)
numbers = st.one_of(
    st.integers(-(2**80), 2**80),
    st.floats(),
    st.sampled_from([math.nan, math.inf, -math.inf, 0, -1, 2**63 - 1, 10**400, True, "3"]),
)
header_maps = st.fixed_dictionaries(
    {},
    optional={
        HEADER_ATTEMPT: numbers | header_values,
        HEADER_MAX_RETRIES: numbers | header_values,
        HEADER_TIMEOUT: numbers | header_values,
        HEADER_NOT_BEFORE: numbers | header_values,
        "x-sender": header_values,
    },
) | st.dictionaries(any_text, header_values, max_size=4)


def assert_sane(head: QueueHeaders, *, ceiling: float = MAX_HEADER_TIMEOUT) -> None:
    assert type(head.attempt) is int and 0 <= head.attempt <= MAX_HEADER_COUNT
    assert type(head.max_retries) is int and 0 <= head.max_retries <= MAX_HEADER_COUNT
    assert isinstance(head.timeout, float) and math.isfinite(head.timeout)
    assert MIN_HEADER_TIMEOUT <= head.timeout <= ceiling
    if head.not_before is not None:
        assert math.isfinite(head.not_before)
        assert head.not_before <= time.time() + MAX_HEADER_DELAY + 1


@PROPERTY_SETTINGS
@given(header_maps)
def test_queue_headers_never_raise_and_stay_finite_and_bounded(headers: dict[str, Any]) -> None:
    assert_sane(QueueHeaders.read(headers, 15.0))
    assert_sane(QueueHeaders.read(headers, 15.0, max_timeout=60.0), ceiling=60.0)


@PROPERTY_SETTINGS
@given(header_maps)
def test_only_present_headers_can_be_malformed_and_each_is_named_in_the_reason(
    headers: dict[str, Any],
) -> None:
    head = QueueHeaders.read(headers, 15.0)
    assert set(head.malformed) <= set(headers)
    for name in head.malformed:
        assert f"{name}=" in head.reason
    assert bool(head.reason) == bool(head.malformed)


@pytest.mark.parametrize(
    ("headers", "expected", "malformed"),
    [
        ({HEADER_ATTEMPT: math.inf, HEADER_MAX_RETRIES: math.nan}, (0, 0, 15.0), "am"),
        ({HEADER_ATTEMPT: 10**30, HEADER_MAX_RETRIES: 2**63 - 1}, (0, 0, 15.0), "am"),
        ({HEADER_ATTEMPT: -4, HEADER_MAX_RETRIES: True, HEADER_TIMEOUT: "9"}, (0, 0, 15.0), "amt"),
        ({HEADER_ATTEMPT: 2.9, HEADER_MAX_RETRIES: 3, HEADER_TIMEOUT: 2500}, (2, 3, 2.5), ""),
        ({HEADER_ATTEMPT: None, HEADER_MAX_RETRIES: 3}, (0, 3, 15.0), "a"),
        ({HEADER_TIMEOUT: math.nan, HEADER_NOT_BEFORE: math.inf}, (0, 0, 15.0), "tn"),
        ({HEADER_TIMEOUT: -math.inf, HEADER_NOT_BEFORE: math.nan}, (0, 0, 15.0), "tn"),
        ({HEADER_TIMEOUT: 0}, (0, 0, 15.0), "t"),
        ({HEADER_TIMEOUT: -5000}, (0, 0, 15.0), "t"),
        ({HEADER_TIMEOUT: 1e-300}, (0, 0, 15.0), "t"),
        ({HEADER_TIMEOUT: 10**30}, (0, 0, 15.0), "t"),
        ({HEADER_NOT_BEFORE: 10**400}, (0, 0, 15.0), "n"),
        ({HEADER_NOT_BEFORE: -(2**63)}, (0, 0, 15.0), ""),  # long due
        ({}, (0, 0, 15.0), ""),  # a plain producer's message: defaults, nothing malformed
        ({"x-sender": "peer", "other": math.nan}, (0, 0, 15.0), ""),
    ],
)
def test_forged_queue_headers_are_named_malformed_and_take_defaults(
    headers: dict[str, Any], expected: tuple[int, int, float], malformed: str
) -> None:
    head = QueueHeaders.read(headers, 15.0)
    assert_sane(head)
    assert (head.attempt, head.max_retries, head.timeout) == expected
    names = {"a": HEADER_ATTEMPT, "m": HEADER_MAX_RETRIES, "t": HEADER_TIMEOUT}
    names["n"] = HEADER_NOT_BEFORE
    assert set(head.malformed) == {names[c] for c in malformed}
    if "n" in malformed:
        assert head.not_before is None


def test_a_timeout_above_the_readers_ceiling_is_malformed() -> None:
    head = QueueHeaders.read({HEADER_TIMEOUT: 3_600_000}, 15.0, max_timeout=1800.0)
    assert (head.timeout, head.malformed) == (15.0, (HEADER_TIMEOUT,))
    assert "x-timeout=3600000" in head.reason and "1800000" in head.reason
    assert QueueHeaders.read({HEADER_TIMEOUT: 1_800_000}, 15.0, max_timeout=1800.0).malformed == ()
    assert QueueHeaders.read({}, 15.0, max_timeout=math.nan).timeout == 15.0


# memory mode: a consumer given forged headers keeps consuming ---------------------------

FORGED: list[dict[str, Any]] = [
    {HEADER_TIMEOUT: math.nan},
    {HEADER_TIMEOUT: math.inf},
    {HEADER_TIMEOUT: 5000, HEADER_NOT_BEFORE: math.inf},
    {HEADER_ATTEMPT: math.nan, HEADER_MAX_RETRIES: math.inf, HEADER_TIMEOUT: math.nan},
    {HEADER_ATTEMPT: math.inf, HEADER_MAX_RETRIES: -math.inf, HEADER_TIMEOUT: math.inf},
    {HEADER_ATTEMPT: 10**400, HEADER_MAX_RETRIES: "many", HEADER_TIMEOUT: -1},
    {HEADER_ATTEMPT: True, HEADER_TIMEOUT: 0, HEADER_NOT_BEFORE: math.nan},
    {HEADER_TIMEOUT: 10**30, HEADER_NOT_BEFORE: -math.inf},
    {HEADER_ATTEMPT: [1], HEADER_MAX_RETRIES: {"a": 1}, HEADER_TIMEOUT: b"9"},
]


async def test_a_memory_queue_consumer_parks_forged_headers_and_keeps_consuming(
    tmp_path: Path,
) -> None:
    """SPEC, "No input stops a consumer": forged headers are parked with the reason (the
    message never runs with made-up values), and consuming goes on."""
    app = unique_app()
    hub = MemoryHub()
    seen: list[tuple[object, QueueContext]] = []

    async def process(message: object, ctx: QueueContext) -> None:
        seen.append((message, ctx))

    async with Bus(app, hub=hub, settings=fast_settings(storage_dir=tmp_path)) as bus:
        await bus.queue.subscribe("jobs", process)
        queue = hub.work_queue(f"{app}.queue.jobs")
        for n, headers in enumerate(FORGED):
            queue.put(
                Envelope(
                    body=codec.encode(f"forged-{n}", channel="jobs"),
                    message_id=f"forged-{n}",
                    sender="peer",
                    trace_id="t",
                    headers=headers,
                )
            )
        good = await bus.queue.publish("jobs", "good")
        await eventually(
            lambda: good in {ctx.id for _, ctx in seen},
            what="the good message after the forged ones was processed",
        )
        await asyncio.sleep(0)  # the loop's timers still work (no NaN in the heap)
        assert [ctx.id for _, ctx in seen] == [good]
        dead = {d.id: d for d in await bus.queue.dead_letters("jobs")}
        assert set(dead) == {f"forged-{n}" for n in range(len(FORGED))}
        for n, headers in enumerate(FORGED):
            letter = dead[f"forged-{n}"]
            assert letter.error.startswith("malformed headers: "), letter.error
            head = QueueHeaders.read(headers, 15.0)
            assert head.malformed
            for name in head.malformed:
                assert f"{name}=" in letter.error, letter.error

"""Internal names are out of reach of user names, and every accepted name fits the broker's
255-byte limit (issue 10, findings 5 and 20)."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from bus import Bus, InvalidName
from managers.names import (
    DEFAULT_SUFFIX_ROOM,
    MAX_NAME_BYTES,
    check_wire_name,
    dead_queue,
    delay_queue,
    instance_queue,
    lock_queue,
    queue_name,
    validate_app_name,
    validate_queue_channel,
)

apps = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,63}", fullmatch=True).filter(lambda a: a != "queue")
channels = st.from_regex(r"[A-Za-z0-9._-]{1,200}", fullmatch=True)
delays = st.floats(min_value=0.001, max_value=10**7)


def valid_queue(app: str, channel: str, shared: bool) -> str:
    """The queue name, or the test example rejected when the channel is refused."""
    try:
        return queue_name(app, channel, shared=shared)
    except InvalidName:
        assume(False)
        raise


@given(
    app=apps,
    one=channels,
    other=channels,
    shared_one=st.booleans(),
    shared_other=st.booleans(),
    delay=delays,
)
def test_no_queue_channel_reaches_a_dead_queue_or_delay_tier(
    *, app: str, one: str, other: str, shared_one: bool, shared_other: bool, delay: float
) -> None:
    first = valid_queue(app, one, shared_one)
    second = valid_queue(app, other, shared_other)
    assert second != dead_queue(first)
    assert second != delay_queue(first, delay)
    assert dead_queue(second) != delay_queue(first, delay)


@given(
    app=apps,
    other_app=apps,
    channel=channels,
    shared=st.booleans(),
    key=st.text(min_size=1),
    instance=st.text(min_size=1),
)
def test_queues_never_meet_lock_or_instance_queues(
    *, app: str, other_app: str, channel: str, shared: bool, key: str, instance: str
) -> None:
    queue = valid_queue(app, channel, shared)
    for internal in (queue, dead_queue(queue), delay_queue(queue, 0.5)):
        assert internal != lock_queue(other_app, key)
        assert internal != instance_queue(other_app, instance)


@given(apps, channels, st.booleans())
def test_every_accepted_queue_name_fits_with_its_longest_suffix(
    app: str, channel: str, shared: bool
) -> None:
    queue = valid_queue(app, channel, shared)
    assert len(queue.encode()) + DEFAULT_SUFFIX_ROOM <= MAX_NAME_BYTES


@pytest.mark.parametrize(
    "channel", ["jobs.dead", "jobs.retry.500", "jobs.retry.0", "a.b.c.dead", "x.y.retry.123456"]
)
def test_channel_endings_of_internal_queues_are_refused(channel: str) -> None:
    with pytest.raises(InvalidName, match=r"may not end with '\.dead' or '\.retry\.<digits>'"):
        validate_queue_channel(channel)


@pytest.mark.parametrize(
    "channel",
    ["dead", "retry.5", "deadline", "jobs.deadx", "jobs.retry", "jobs.retry.5a", "a-dead"],
)
def test_channels_that_only_resemble_internal_names_pass(channel: str) -> None:
    assert validate_queue_channel(channel) == channel


def test_the_app_name_of_shared_queues_is_reserved() -> None:
    # shared queues are "queue.<channel>": app "queue" would own "queue.queue.<c>",
    # "queue.lock.<k>", ... that shared channels can name
    with pytest.raises(InvalidName, match="reserved"):
        validate_app_name("queue")
    with pytest.raises(InvalidName, match="reserved"):
        Bus("queue")
    assert validate_app_name("queues") == "queues"


def test_a_name_over_255_bytes_is_refused_with_the_limit() -> None:
    assert check_wire_name("q" * 255) == "q" * 255
    with pytest.raises(InvalidName, match=r"256 bytes.*at most 255"):
        check_wire_name("q" * 256)
    with pytest.raises(InvalidName, match="plus 19 bytes"):
        check_wire_name("q" * 240, room=19)
    longest_app = "a" * 64
    with pytest.raises(InvalidName, match="255"):
        queue_name(longest_app, "c" * 200)

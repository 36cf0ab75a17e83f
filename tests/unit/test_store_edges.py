"""Both cache stores on their own, at their edges (issue 10, findings 19 and 20): a ttl the
store cannot take is refused the same way by both (never an ``OverflowError`` from the Redis
client), and a prefix is matched literally (glob characters included)."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog

from bus.stores import MemoryStore
from bus.stores.redis import RedisStore, connect


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A store of each kind; the Redis one cleans its test keys up."""
    if request.param == "memory":
        yield MemoryStore(max_size=100)
        return
    client = connect(request.getfixturevalue("redis_url"))
    redis_store = RedisStore(client, log=structlog.get_logger("test"))
    yield redis_store
    await redis_store.clear(HEAD)
    await redis_store.close()


HEAD = f"t-{uuid.uuid4().hex[:8]}:"  # this run's keys, in the shared Redis


@pytest.mark.parametrize("ttl", [math.inf, -math.inf, math.nan, 0.0, -1.0], ids=repr)
async def test_a_ttl_the_store_cannot_take_is_a_value_error(store: Any, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl must be a finite number of seconds > 0"):
        await store.set(f"{HEAD}k", b"v", ttl)
    with pytest.raises(ValueError, match="ttl must be a finite number of seconds > 0"):
        await store.mset([(f"{HEAD}m", b"v")], ttl)
    with pytest.raises(ValueError, match="ttl must be a finite number of seconds > 0"):
        await store.mset([], ttl)  # refused even when there is nothing to store
    assert await store.keys(HEAD, "*") == []


async def test_a_short_ttl_is_at_least_a_millisecond(store: Any) -> None:
    await store.set(f"{HEAD}k", b"v", 3600.0)
    await store.mset([(f"{HEAD}m", b"v")], 1e-9)  # rounds up to 1 ms on Redis, never 0
    remaining = await store.ttl(f"{HEAD}k")
    assert remaining is not None and 3599 < remaining <= 3600


async def test_prefixes_are_matched_literally(store: Any) -> None:
    glob, plain = f"{HEAD}a*[b]?:", f"{HEAD}a-x[b]z:"  # glob characters in a prefix
    await store.set(f"{glob}k", b"1", None)
    await store.set(f"{plain}k", b"2", None)
    assert await store.keys(glob, "*") == [f"{glob}k"]
    await store.clear(glob)
    assert await store.get(f"{glob}k") is None
    assert await store.get(f"{plain}k") == b"2"

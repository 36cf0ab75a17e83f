"""Cache behaviour on both stores (memory, redis) and both backends (memory hub, RabbitMQ)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import pytest

from bus import Bus, BusError, PayloadError
from managers.cache import Cache
from tests.conftest import BusFactory, eventually


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> str:
    """Runs a test once per cache store; the redis run needs the local Redis."""
    if request.param == "redis":
        request.getfixturevalue("redis_url")
    return str(request.param)


MakeCache = Callable[..., Awaitable[tuple[Bus, Cache]]]


@pytest.fixture
async def make_cache(make_bus: BusFactory, store: str) -> AsyncIterator[MakeCache]:
    """Factory of (bus, cache) pairs: the same cache name on new instances of one app."""
    from tests.conftest import REDIS_URL

    made: list[Cache] = []

    async def make(name: str = "users", **options: Any) -> tuple[Bus, Cache]:
        bus = await make_bus(redis_url=REDIS_URL)
        cache = await bus.cache_manager.create_cache(name, store=store, **options)  # type: ignore[arg-type]
        made.append(cache)
        return bus, cache

    yield make
    for cache in made:  # leave nothing behind in the shared Redis
        if cache.store.shared:
            await cache.reset()


async def test_get_set_delete_and_defaults(make_cache: Any) -> None:
    _, cache = await make_cache()
    assert await cache.get("missing") is None
    assert await cache.get("missing", default="d") == "d"
    for key, value in [("a", {"n": [1, 2]}), ("zero", 0), ("false", False), ("empty", "")]:
        await cache.set(key, value)
        assert await cache.get(key, default="d") == value
    await cache.delete("a")
    assert await cache.get("a") is None


async def test_values_read_back_are_copies(make_cache: Any) -> None:
    _, cache = await make_cache()
    value = {"roles": ["admin"]}
    await cache.set("u", value)
    value["roles"].append("root")
    got = await cache.get("u")
    got["roles"].append("dev")
    assert await cache.get("u") == {"roles": ["admin"]}


async def test_ttl_expiry_and_remaining_time(make_cache: Any) -> None:
    _, cache = await make_cache()
    await cache.set("short", "v", ttl=0.3)
    await cache.set("forever", "v")
    remaining = await cache.ttl("short")
    assert remaining is not None and 0 < remaining <= 0.3
    assert await cache.ttl("forever") is None
    assert await cache.ttl("missing") is None
    values: list[Any] = ["v"]

    async def read() -> None:
        values.append(await cache.get("short"))

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while values[-1] is not None:
        assert loop.time() < deadline, "entry did not expire"
        await asyncio.sleep(0.05)
        await read()
    assert await cache.ttl("short") is None
    assert "short" not in await cache.keys()


async def test_cache_default_ttl_applies(make_cache: Any) -> None:
    _, cache = await make_cache(ttl=60)
    await cache.set("k", 1)
    remaining = await cache.ttl("k")
    assert remaining is not None and 50 < remaining <= 60
    await cache.set("k", 1, ttl=5)
    remaining = await cache.ttl("k")
    assert remaining is not None and remaining <= 5


async def test_batches_and_keys(make_cache: Any) -> None:
    _, cache = await make_cache()
    await cache.mset({"user:1": "ann", "user:2": "bob"})
    await cache.mset([("team:1", "core")], ttl=30)
    assert await cache.mget("user:1", "nope", "team:1") == ["ann", None, "core"]
    assert await cache.keys() == ["team:1", "user:1", "user:2"]
    assert await cache.keys("user:*") == ["user:1", "user:2"]
    await cache.mdelete("user:1", "team:1")
    assert await cache.keys() == ["user:2"]


async def test_mset_checks_every_value_before_storing_any(make_cache: Any) -> None:
    _, cache = await make_cache()
    with pytest.raises(PayloadError, match=r"cache 'users', key 'bad'"):
        await cache.mset({"good": 1, "bad": object()})
    assert await cache.keys() == []


async def test_unserialisable_value_names_the_cache_and_key(make_cache: Any) -> None:
    _, cache = await make_cache()
    with pytest.raises(PayloadError, match=r"cache 'users', key 'k'"):
        await cache.set("k", {1, 2})
    with pytest.raises(PayloadError, match=r"cache 'users', key 'w'"):
        await cache.wrap("w", _const(object()))
    assert await cache.get("k") is None


async def test_reset_removes_only_this_caches_keys(make_cache: Any) -> None:
    bus, users = await make_cache("users")
    short = await bus.cache_manager.create_cache("u", store=users.store_kind)
    await users.set("1", "ann")
    await short.set("1", "other cache, prefix 'u'")
    await bus.cache.set("1", "default cache")
    await users.reset()
    assert await users.keys() == []
    assert await short.get("1") == "other cache, prefix 'u'"
    assert await bus.cache.get("1") == "default cache"
    await short.reset()


async def _all_joined(cache: Any, key: str, count: int) -> None:
    """Wait until ``count`` callers share the single flight of ``key`` (a Redis store makes
    each caller's cache read take a while, so a fixed sleep is not enough under load)."""

    def joined() -> bool:
        flight = cache._flights.get(key)
        return flight is not None and flight.waiters == count

    await eventually(joined, what=f"{count} callers waiting on {key!r}")


async def test_wrap_is_single_flight(make_cache: Any) -> None:
    _, cache = await make_cache()
    calls = 0
    release = asyncio.Event()

    async def load() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await release.wait()
        return {"policy": 7}

    callers = [asyncio.create_task(cache.wrap("policy", load, ttl=60)) for _ in range(10)]
    await _all_joined(cache, "policy", 10)
    release.set()
    assert await asyncio.gather(*callers) == [{"policy": 7}] * 10
    assert calls == 1
    assert await cache.get("policy") == {"policy": 7}
    assert await cache.wrap("policy", load) == {"policy": 7}
    assert calls == 1


async def test_wrap_error_reaches_every_caller_and_caches_nothing(make_cache: Any) -> None:
    _, cache = await make_cache()
    calls = 0
    release = asyncio.Event()

    async def broken() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        raise LookupError("db down")

    callers = [asyncio.create_task(cache.wrap("k", broken)) for _ in range(10)]
    await _all_joined(cache, "k", 10)
    release.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, LookupError) for r in results)
    assert calls == 1
    assert await cache.get("k") is None
    assert await cache.wrap("k", _const("ok")) == "ok"


async def test_wrap_never_caches_none(make_cache: Any) -> None:
    _, cache = await make_cache()
    calls = 0

    async def nothing() -> None:
        nonlocal calls
        calls += 1

    assert await cache.wrap("k", nothing) is None
    assert await cache.wrap("k", nothing) is None
    assert calls == 2
    assert await cache.keys() == []


async def test_wrap_with_condition(make_cache: Any) -> None:
    _, cache = await make_cache()
    assert await cache.wrap_with_condition("a", _const(1), use_cache=False) == 1
    assert await cache.keys() == []
    assert await cache.wrap_with_condition("b", _const(2), is_cacheable=lambda v: v > 5) == 2
    assert await cache.get("b") is None

    async def big(value: int) -> bool:
        return value > 5

    assert await cache.wrap_with_condition("c", _const(9), is_cacheable=big) == 9
    assert await cache.get("c") == 9
    # a cached falsy value is a hit: fn is not called again
    assert await cache.wrap_with_condition("zero", _const(0)) == 0
    assert await cache.wrap_with_condition("zero", _const(99)) == 0
    # use_cache=False bypasses the cached value
    assert await cache.wrap_with_condition("zero", _const(5), use_cache=False) == 5


async def test_cache_manager_names(make_cache: Any) -> None:
    bus, cache = await make_cache()
    assert bus.cache_manager.get_cache("users") is cache
    assert await bus.cache_manager.create_cache("users", store=cache.store_kind) is cache
    with pytest.raises(BusError, match="other options"):
        await bus.cache_manager.create_cache("users", store=cache.store_kind, ttl=5)
    with pytest.raises(KeyError, match="'nope'"):
        bus.cache_manager.get_cache("nope")
    assert bus.cache is bus.cache_manager.get_cache("default")


async def test_writes_on_one_instance_invalidate_the_others(make_cache: Any) -> None:
    _, a = await make_cache()
    _, b = await make_cache()
    _, c = await make_cache()
    await a.set("k", "from a")
    await c.set("gone", "c")
    await c.set("kept", "c")
    # let b consume a's invalidation of "k" first (a's messages arrive in order), or it
    # would rightly drop the value b is about to write
    await b.set("probe", 1)
    await a.delete("probe")
    await settles(b, "probe", lambda v: v is None, "b caught up with a")

    await b.set("k", "from b")  # returns once the invalidation is published
    await settles(a, "k", lambda v: v != "from a", "a dropped its old value")
    assert await a.get("k") in (None, "from b")  # memory: dropped; redis: shared value
    assert await b.get("k") == "from b"

    await a.delete("gone")
    await settles(c, "gone", lambda v: v is None, "delete reached c")
    assert await c.get("kept") == "c"

    await b.reset()
    await settles(c, "kept", lambda v: v is None, "reset reached c")


async def test_concurrent_writes_share_invalidation_messages_on_the_broker(
    make_cache: Any, debug_logs: list[MutableMapping[str, Any]]
) -> None:
    a_bus, a = await make_cache()
    await make_cache()
    await asyncio.gather(*(a.set(f"k{i}", i) for i in range(100)))
    sent = [
        e
        for e in debug_logs
        if e["event"] == "pubsub.publish"
        and e["channel"] == "cache.invalidate"
        and e["instance"] == a_bus.instance_id
    ]
    if a.store.shared:
        assert sent == []  # a shared store needs no invalidation
    elif a_bus.mode == "memory":
        assert len(sent) == 100  # the hub never waits: each write publishes at once
    else:
        assert 1 <= len(sent) <= 3  # the broker confirms one message for many writes
        counted = [e for e in debug_logs if e["event"] == "cache.invalidation_sent"]
        assert sum(int(e["count"]) for e in counted) == 100


async def test_an_invalidation_during_a_fill_keeps_the_stale_value_out(
    make_bus: BusFactory, debug_logs: list[MutableMapping[str, Any]]
) -> None:
    # memory store only: a shared store has no per-instance copies to invalidate
    a_bus, b_bus = await make_bus(), await make_bus()
    a = await a_bus.cache_manager.create_cache("users", store="memory")
    b = await b_bus.cache_manager.create_cache("users", store="memory")
    reading = asyncio.Event()
    release = asyncio.Event()

    async def read_old_row() -> str:
        reading.set()
        await release.wait()
        return "old row"

    fill = asyncio.create_task(a.wrap("row", read_old_row))
    await reading.wait()
    await b.delete("row")  # the row changed while a was reading it
    await eventually(
        lambda: any(
            e["event"] == "cache.invalidation_received" and e["instance"] == a_bus.instance_id
            for e in debug_logs
        ),
        what="a received the invalidation",
    )
    release.set()
    assert await fill == "old row"
    assert await a.get("row") is None


async def settles(cache: Cache, key: str, check: Any, what: str) -> None:
    """Poll ``cache.get(key)`` until ``check(value)`` holds (invalidations travel async)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not check(value := await cache.get(key)):
        if loop.time() > deadline:
            pytest.fail(f"{what}: still {value!r} after 10 s")
        await asyncio.sleep(0.01)


def _const(value: Any) -> Any:
    async def fn() -> Any:
        return value

    return fn

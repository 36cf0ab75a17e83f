"""Caches at their edges (issue 10): cancelled ``wrap`` callers (finding 7), writes made in
``before_stop`` (finding 8), nested prefixes (finding 19), out-of-range ttls (finding 20) and
values that cannot round-trip (finding 16); on both stores and both backends."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from bus import InvalidName, MemoryHub, PayloadError
from managers.cache import Cache
from plugins import App, Plugin
from tests.conftest import AMQP_URL, eventually, fast_settings, unique_app
from tests.shared.test_cache import MakeCache, make_cache, store

__all__ = ["make_cache", "store"]  # the fixtures, shared with test_cache.py


class SpyStore:
    """Wraps a cache's store and counts the reads that returned (a ``wrap`` caller whose
    read returned has joined, or started, the key's flight in the same step) and the writes
    begun."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.shared = inner.shared
        self.reads = 0
        self.writes = 0

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self.inner.get(key)
        self.reads += 1
        return value

    async def set(self, key: str, value: bytes, ttl: float | None) -> None:
        self.writes += 1
        await self.inner.set(key, value, ttl)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def spy_on(cache: Cache) -> SpyStore:
    spy = SpyStore(cache.store)
    store: Any = spy
    cache.store = store
    return spy


def const(value: Any) -> Callable[[], Awaitable[Any]]:
    async def fn() -> Any:
        return value

    return fn


# finding 7: cancelling wrap callers -------------------------------------------------------


async def test_cancelling_the_first_caller_spares_the_others(make_cache: MakeCache) -> None:
    _, cache = await make_cache()
    spy = spy_on(cache)
    calls = 0
    release = asyncio.Event()

    async def load() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await release.wait()
        return {"policy": 7}

    first = asyncio.create_task(cache.wrap("k", load))
    await eventually(lambda: calls == 1, what="the first caller runs fn")
    others = [asyncio.create_task(cache.wrap("k", load)) for _ in range(3)]
    await eventually(lambda: spy.reads == 4, what="the other callers joined the flight")
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    release.set()
    assert await asyncio.gather(*others) == [{"policy": 7}] * 3
    assert calls == 1
    assert await cache.get("k") == {"policy": 7}


async def test_when_every_caller_is_cancelled_the_key_is_free(make_cache: MakeCache) -> None:
    _, cache = await make_cache()
    spy = spy_on(cache)
    fn_cancelled = asyncio.Event()

    async def forever() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            fn_cancelled.set()
            raise
        return "never"

    scope = anyio.CancelScope()

    async def in_a_cancel_scope() -> None:
        with scope:  # how anyio (FastAPI, Starlette) cancels
            await cache.wrap("k", forever)

    leader = asyncio.create_task(in_a_cancel_scope())
    follower = asyncio.create_task(cache.wrap("k", forever))
    await eventually(lambda: spy.reads == 2, what="both callers joined")
    scope.cancel()
    await leader
    assert not fn_cancelled.is_set()  # the follower still waits for it
    follower.cancel()
    follower.cancel()  # cancelled twice
    with pytest.raises(asyncio.CancelledError):
        await follower
    await eventually(fn_cancelled.is_set, what="fn is cancelled once no caller is left")
    assert await cache.wrap("k", const("fresh")) == "fresh"
    assert await cache.get("k") == "fresh"


async def test_an_abandoned_fill_that_ignores_cancellation_neither_blocks_nor_stores(
    make_cache: MakeCache,
) -> None:
    _, cache = await make_cache()
    spy = spy_on(cache)
    gate = asyncio.Event()
    finished = asyncio.Event()

    async def stubborn() -> str:
        while True:
            try:
                await gate.wait()
                break
            except asyncio.CancelledError:
                continue  # swallows its cancellation
        finished.set()
        return "stale"

    only = asyncio.create_task(cache.wrap("k", stubborn))
    try:
        await eventually(lambda: spy.reads == 1, what="the caller started the fill")
        only.cancel()
        await eventually(only.done, what="the cancelled caller returned")
        assert only.cancelled()
        # a later wrap of the key runs its own fn at once, not waiting for the stubborn one
        later = asyncio.create_task(cache.wrap("k", const("fresh")))
        await eventually(later.done, what="a later wrap is not blocked by the abandoned fill")
    finally:
        gate.set()
    assert later.result() == "fresh"
    await eventually(finished.is_set, what="the stubborn fill ended")
    await asyncio.sleep(0)  # a fill that (wrongly) stores begins its write in this step
    assert spy.writes == 1  # the fresh value only
    assert await cache.get("k") == "fresh"


# finding 8: writes in before_stop -----------------------------------------------------------


class Writer(Plugin):
    """Writes to its caches while the app stops."""

    name = "writer"
    users: Cache
    other: Cache

    async def load(self) -> None:
        self.users = await self.bus.cache_manager.create_cache("users", store="memory")
        self.other = await self.bus.cache_manager.create_cache("other", store="memory")

    async def before_stop(self) -> None:
        await self.users.set("k", "new")
        await self.users.mdelete("gone")
        await self.other.reset()


@pytest.fixture
async def apps(backend: str, tmp_path: Path) -> AsyncIterator[list[App]]:
    name, hub = unique_app(), MemoryHub()
    settings = fast_settings(storage_dir=tmp_path)
    made = [
        App(name, amqp_url=AMQP_URL, settings=settings)
        if backend == "amqp"
        else App(name, hub=hub, settings=settings)
        for _ in range(2)
    ]
    for app in made:
        app.add(Writer)
    yield made
    for app in made:
        await app.stop()


async def settles(check: Callable[[], Awaitable[bool]], what: str, within: float = 10.0) -> None:
    """Poll the async ``check`` until it holds (``eventually`` for async checks)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"condition not met within {within}s: {what}")
        await asyncio.sleep(0.01)


async def test_writes_in_before_stop_invalidate_the_running_instances(apps: list[App]) -> None:
    for app in apps:
        await app.start()
    running = apps[1].get(Writer)
    await running.users.set("k", "old")
    await running.users.set("gone", "x")
    await running.other.set("o", 1)
    await apps[0].stop()  # its before_stop writes, after its deliveries stopped

    async def dropped() -> bool:
        values = [
            await running.users.get("k"),
            await running.users.get("gone"),
            await running.other.get("o"),
        ]
        return values == [None, None, None]

    await settles(dropped, "the running instance dropped what before_stop changed")


# finding 19: nested prefixes ------------------------------------------------------------------


async def test_a_prefix_with_a_colon_is_refused(make_cache: MakeCache, store: str) -> None:
    bus, _ = await make_cache("auth", prefix="auth")
    with pytest.raises(InvalidName, match=r"prefix 'auth:v2'"):
        await bus.cache_manager.create_cache("auth-v2", prefix="auth:v2", store=store)  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        bus.cache_manager.get_cache("auth-v2")


async def test_reset_and_keys_stay_inside_their_prefix(make_cache: MakeCache, store: str) -> None:
    bus, auth = await make_cache("auth", prefix="auth")
    manager = bus.cache_manager
    kind: Any = store
    v2 = await manager.create_cache("auth-v2", prefix="auth.v2", store=kind)
    glob = await manager.create_cache("glob", prefix="au*", store=kind)
    others = [v2, glob]
    await auth.set("v2:x", "a key with a colon belongs to auth")
    await auth.set("x", "auth")
    for cache in others:
        await cache.set("x", cache.name)
    assert await auth.keys() == ["v2:x", "x"]
    assert await glob.keys() == ["x"]
    await glob.reset()  # 'au*' taken literally: auth's keys stay
    assert await auth.keys() == ["v2:x", "x"]
    await auth.reset()
    assert await auth.keys() == []
    assert await v2.get("x") == "auth-v2"
    await v2.reset()


# finding 20: ttls out of range ----------------------------------------------------------------

BAD_TTLS: list[Any] = [math.inf, -math.inf, math.nan, 0, -1.0, 1e300]


@pytest.mark.parametrize("ttl", BAD_TTLS, ids=repr)
async def test_bad_ttls_are_refused_at_the_call(make_cache: MakeCache, ttl: Any) -> None:
    bus, cache = await make_cache()
    calls = 0

    async def fn() -> str:
        nonlocal calls
        calls += 1
        return "value"

    where = r"cache 'users', key 'k'"
    with pytest.raises(ValueError, match=rf"{where}: ttl must be a finite number"):
        await cache.set("k", "value", ttl=ttl)
    with pytest.raises(ValueError, match=r"cache 'users', keys 'k', 'j': ttl"):
        await cache.mset({"k": 1, "j": 2}, ttl=ttl)
    with pytest.raises(ValueError, match=rf"{where}: ttl"):
        await cache.wrap("k", fn, ttl=ttl)
    with pytest.raises(ValueError, match=rf"{where}: ttl"):
        await cache.wrap_with_condition("k", fn, ttl=ttl)
    assert calls == 0  # refused before fn ran
    assert await cache.keys() == []
    with pytest.raises(ValueError, match=r"cache 'timed': ttl"):
        await bus.cache_manager.create_cache("timed", store=cache.store_kind, ttl=ttl)  # type: ignore[arg-type]


async def test_ttls_that_are_not_numbers_are_refused(make_cache: MakeCache) -> None:
    _, cache = await make_cache()
    bad: Any
    for bad in (True, "5"):
        with pytest.raises(TypeError, match=r"cache 'users', key 'k': ttl must be a number"):
            await cache.set("k", "value", ttl=bad)
    await cache.set("k", "value", ttl=3600)  # an int is fine
    remaining = await cache.ttl("k")
    assert remaining is not None and 0 < remaining <= 3600


# finding 16: values that do not round-trip ----------------------------------------------------


async def test_a_value_that_does_not_decode_back_is_refused(make_cache: MakeCache) -> None:
    _, cache = await make_cache()
    bad = {(1, 2): "a tuple key comes back as a list, which cannot be a key"}
    with pytest.raises(PayloadError, match=r"cache 'users', key 'k': .*does not decode back"):
        await cache.set("k", bad)
    with pytest.raises(PayloadError, match=r"cache 'users', key 'm'"):
        await cache.mset({"fine": 1, "m": bad})
    with pytest.raises(PayloadError, match=r"cache 'users', key 'w'"):
        await cache.wrap("w", const(bad))
    assert await cache.keys() == []

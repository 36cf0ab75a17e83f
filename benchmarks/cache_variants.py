"""The variants of the cache benchmark, and the peers that receive their invalidations.

The workload (the value, the key space) and the variants' names live here. A variant, set
up, is a :class:`Subject`: the ``set``/``get`` the timing loops call directly. The variants
come in groups that are set up together and measured side by side (:func:`memory_group`,
:func:`redis_group`, :func:`amqp_group`); a ``*_peers`` variant brings :class:`Peers`, the
other instances of its app. See :mod:`benchmarks.cache` for what each variant is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
from aiocache import SimpleMemoryCache
from cashews import Cache as CashewsCache
from pydantic import SecretStr
from redis.asyncio import Redis

from benchmarks.amqp_cleanup import delete_exchanges
from benchmarks.cli import log
from bus import Bus, Cache, MemoryHub, Settings
from managers.names import INVALIDATION_CHANNEL, pubsub_name

VALUE: dict[str, Any] = {"id": 123, "name": "alice", "roles": ["admin", "dev"], "active": True}
KEY_SPACE = 1000
KEYS = [f"user:{i}" for i in range(KEY_SPACE)]
CACHE_NAME = "bench"
PEERS = 2
SETTLE_TIMEOUT = 15.0
SETTLE_POLL = 0.001

GET, SET, SET_X64, COMBINED = "get", "set", "set_x64", "combined"

CLUSTERBUS_MEMORY = "clusterbus_memory"
CLUSTERBUS_MEMORY_PEERS = "clusterbus_memory_peers"
CLUSTERBUS_MEMORY_UNSTARTED = "clusterbus_memory_unstarted"
CASHEWS_MEM = "cashews_mem"
AIOCACHE_MEMORY = "aiocache_memory"
CLUSTERBUS_REDIS = "clusterbus_redis"
RAW_REDIS = "raw_redis"
CLUSTERBUS_AMQP_PEERS = "clusterbus_amqp_peers"

DESCRIPTIONS = {
    CLUSTERBUS_MEMORY: "memory store, memory mode, started bus, no other instance",
    CLUSTERBUS_MEMORY_PEERS: f"memory store, memory mode, {PEERS} peers on the hub",
    CLUSTERBUS_MEMORY_UNSTARTED: "memory store of a bus never started (no invalidation)",
    CASHEWS_MEM: "cashews mem://, default settings (no pickling, stores a shallow copy)",
    AIOCACHE_MEMORY: "aiocache SimpleMemoryCache, default NullSerializer (stores the object)",
    CLUSTERBUS_REDIS: "redis store of a memory-mode bus (msgpack via the bus codec)",
    RAW_REDIS: "redis-py asyncio GET/SET, msgpack packb/unpackb per op",
    CLUSTERBUS_AMQP_PEERS: f"memory store, amqp mode, {PEERS} peers, invalidation confirmed",
}

GetFn = Callable[[str], Awaitable[object]]
SetFn = Callable[[str, Any], Awaitable[object]]


# peers and their invalidations -------------------------------------------------------------


class InvalidationCounter:
    """Counts the invalidation messages and keys one peer received (during a warm-up)."""

    def __init__(self) -> None:
        self.messages = 0
        self.keys = 0
        self._changed = asyncio.Event()

    async def handle(self, entries: Any) -> None:
        """Pub/sub handler on ``cache.invalidate`` (next to the cache manager's own)."""
        self.messages += 1
        for entry in entries if isinstance(entries, list) else ():
            keys = entry.get("keys") if isinstance(entry, dict) else None
            if entry.get("cache") == CACHE_NAME and isinstance(keys, list):
                self.keys += len(keys)
        self._changed.set()

    async def wait_for(self, keys: int) -> None:
        """Wait until the invalidations of ``keys`` keys arrived."""
        try:
            async with asyncio.timeout(SETTLE_TIMEOUT):
                while self.keys < keys:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise RuntimeError(
                f"invalidations missing: a peer received {self.keys} of {keys} keys "
                f"within {SETTLE_TIMEOUT}s"
            ) from None


class Peers:
    """The other instances of a writer, holding the keys it is about to write.

    Before each timed chunk of sets the chunk's keys are put straight into every peer's
    store (no invalidation traffic), as a cluster whose instances cached them would have
    them; after it, :meth:`settle` waits (untimed) until every peer dropped all of them,
    which checks that every invalidation arrived and keeps a peer's leftover work out of
    the next variant's chunk. The messages are counted only in the warm-up: a second
    handler on the channel would make every delivery dearer.
    """

    def __init__(self, buses: list[Bus], caches: list[Cache]) -> None:
        self.buses = buses
        self.caches = caches
        self._raw: bytes = msgpack.packb(VALUE)

    async def prime(self, keys: Sequence[str]) -> None:
        """Put ``keys`` into every peer's store, telling no one."""
        for cache in self.caches:
            for key in set(keys):
                await cache.store.set(cache.full_key(key), self._raw, None)

    async def settle(self) -> None:
        """Wait until no peer holds a key any more."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_TIMEOUT
        for cache in self.caches:
            while held := await cache.keys():
                if loop.time() > deadline:
                    raise RuntimeError(
                        f"invalidations missing: a peer still holds {len(held)} keys "
                        f"{SETTLE_TIMEOUT}s after the sets returned"
                    )
                await asyncio.sleep(SETTLE_POLL)

    @contextlib.asynccontextmanager
    async def counting(self) -> AsyncIterator[InvalidationCounter]:
        """Count what the first peer receives while the block runs."""
        counter = InvalidationCounter()
        pubsub = self.buses[0].pubsub
        await pubsub.subscribe(INVALIDATION_CHANNEL, counter.handle)
        try:
            yield counter
        finally:
            await pubsub.unsubscribe(INVALIDATION_CHANNEL, counter.handle)


# the variants ------------------------------------------------------------------------------


@dataclass(slots=True)
class Subject:
    """One variant, set up and ready: the operations the loops call directly."""

    name: str
    set: SetFn
    get: GetFn | None = None
    concurrent: bool = False
    peers: Peers | None = None
    messages: dict[str, float] = field(default_factory=dict)  # per set, by operation

    def measures(self, operation: str) -> bool:
        """Whether ``operation`` is measured for this variant."""
        if operation == GET:
            return self.get is not None
        if operation == SET_X64:
            return self.concurrent
        return True


def new_app_name() -> str:
    """A fresh app name, so that runs never share keys, exchanges or queues."""
    return f"bench-cache-{uuid.uuid4().hex[:12]}"


def bench_settings(redis_url: str | None = None) -> Settings:
    """Settings of every benchmark bus: quiet logs, and the Redis of the redis store."""
    if redis_url is None:
        return Settings(log_level="WARNING")
    return Settings(log_level="WARNING", redis_url=SecretStr(redis_url))


async def cleanup(what: str, action: Callable[[], Awaitable[object]]) -> None:
    """Run a cleanup ``action``; a failure is logged, not raised, so that it never hides
    the error that ended the round (a round that ran fine keeps its figures)."""
    try:
        await action()
    except Exception as exc:
        log(f"  cleanup failed ({what}): {type(exc).__name__}: {exc}")


@contextlib.asynccontextmanager
async def started(buses: list[Bus]) -> AsyncIterator[list[Bus]]:
    """Start ``buses`` (in order) and stop every one of them afterwards."""
    try:
        for bus in buses:
            await bus.start()
        yield buses
    finally:
        for bus in buses:
            await bus.stop()


async def with_peers(
    stack: contextlib.AsyncExitStack, name: str, make_bus: Callable[[], Bus]
) -> Subject:
    """A writer bus and ``PEERS`` other instances, each with the benchmark cache."""
    buses = await stack.enter_async_context(started([make_bus() for _ in range(PEERS + 1)]))
    caches = [await bus.cache_manager.create_cache(CACHE_NAME, store="memory") for bus in buses]
    peers = Peers(buses[1:], caches[1:])
    return Subject(name, caches[0].set, caches[0].get, concurrent=True, peers=peers)


async def memory_group(stack: contextlib.AsyncExitStack, args: argparse.Namespace) -> list[Subject]:
    """The in-process caches: clusterbus memory store (three ways), cashews, aiocache."""
    hub = MemoryHub()
    solo = await stack.enter_async_context(
        started([Bus(new_app_name(), hub=hub, settings=bench_settings())])
    )
    cache = await solo[0].cache_manager.create_cache(CACHE_NAME, store="memory")
    app = new_app_name()
    peers = await with_peers(
        stack, CLUSTERBUS_MEMORY_PEERS, lambda: Bus(app, hub=hub, settings=bench_settings())
    )
    unstarted = Bus(new_app_name(), hub=MemoryHub(), settings=bench_settings())
    local = await unstarted.cache_manager.create_cache(CACHE_NAME, store="memory")

    cashews = CashewsCache()
    cashews.setup("mem://")
    stack.push_async_callback(cashews.close)
    aiocache = SimpleMemoryCache()
    stack.push_async_callback(aiocache.close)
    return [
        Subject(CLUSTERBUS_MEMORY, cache.set, cache.get, concurrent=True),
        peers,
        Subject(CLUSTERBUS_MEMORY_UNSTARTED, local.set, local.get),
        Subject(CASHEWS_MEM, cashews.set, cashews.get),
        Subject(AIOCACHE_MEMORY, aiocache.set, aiocache.get),
    ]


async def redis_group(stack: contextlib.AsyncExitStack, args: argparse.Namespace) -> list[Subject]:
    """clusterbus's redis store and redis-py used directly, on the same Redis."""
    url: str = args.redis_url
    app = new_app_name()
    buses = await stack.enter_async_context(
        started([Bus(app, hub=MemoryHub(), settings=bench_settings(url))])
    )
    cache: Cache = await buses[0].cache_manager.create_cache(CACHE_NAME, store="redis")
    stack.push_async_callback(cleanup, "reset the redis cache", cache.reset)  # bus still open

    client = Redis.from_url(url)
    stack.push_async_callback(client.aclose)
    head = f"{app}:raw:"
    raw_keys = [head + key for key in KEYS]
    stack.push_async_callback(cleanup, "delete the raw keys", lambda: client.unlink(*raw_keys))

    async def raw_set(key: str, value: Any) -> None:
        await client.set(head + key, msgpack.packb(value))

    async def raw_get(key: str) -> Any:
        raw: bytes | str | None = await client.get(head + key)
        return msgpack.unpackb(raw) if isinstance(raw, bytes) else raw

    return [
        Subject(CLUSTERBUS_REDIS, cache.set, cache.get),
        Subject(RAW_REDIS, raw_set, raw_get),
    ]


async def amqp_group(stack: contextlib.AsyncExitStack, args: argparse.Namespace) -> list[Subject]:
    """A memory store cache in amqp mode, with two peers receiving its invalidations."""
    url: str = args.amqp_url
    app = new_app_name()
    exchanges = [pubsub_name(app, INVALIDATION_CHANNEL)]
    stack.push_async_callback(
        cleanup, "delete the exchange", lambda: delete_exchanges(url, exchanges)
    )
    subject = await with_peers(
        stack, CLUSTERBUS_AMQP_PEERS, lambda: Bus(app, amqp_url=url, settings=bench_settings())
    )
    subject.get = None  # a get never leaves the process: the memory-mode figure holds
    return [subject]


GroupFactory = Callable[[contextlib.AsyncExitStack, argparse.Namespace], Awaitable[list[Subject]]]


def groups(args: argparse.Namespace) -> dict[str, GroupFactory]:
    """The groups of variants to run, in order."""
    found: dict[str, GroupFactory] = {"memory": memory_group, "redis": redis_group}
    if not args.skip_amqp:
        found["amqp"] = amqp_group
    return found

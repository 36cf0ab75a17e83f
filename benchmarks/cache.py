"""Cache benchmark: clusterbus caches against cashews, aiocache and raw redis-py.

Every operation is awaited one at a time in a loop (sequential), on a small realistic value
(a dict of four fields, 41 msgpack bytes) over a key space of 1000 keys; gets always hit.
Figures are operations per second, the median of ``--rounds`` rounds of ``--ops`` operations
per variant and operation, each round after a warm-up (not counted).

Variants:

* ``clusterbus_memory``: a ``memory`` store cache of a started memory-mode :class:`bus.Bus`
  (alone on its :class:`bus.MemoryHub`); every set publishes its invalidation on the hub.
* ``clusterbus_memory_peers``: the same with two other started instances of the app on the
  hub, which receive every invalidation (in this process).
* ``clusterbus_memory_unstarted``: the memory store of a bus that was never started, so a
  set invalidates nothing: the cost of the store and the codec alone (for reference).
* ``cashews_mem``: cashews ``Cache().setup("mem://")`` with its defaults (no pickling; the
  store keeps a shallow copy of the value and a get returns that stored object).
* ``aiocache_memory``: aiocache ``SimpleMemoryCache`` with its default serializer,
  ``NullSerializer`` (stores the object itself: a get returns the very object set).
* ``clusterbus_redis``: a ``redis`` store cache (values msgpack-encoded by the codec).
* ``raw_redis``: redis-py asyncio ``SET``/``GET`` of ``msgpack.packb(value)`` on the same
  Redis, decoding with ``msgpack.unpackb`` on get (the work a hand-written cache does).
* ``clusterbus_amqp_peers``: a memory store cache of a started amqp-mode bus with two other
  started instances of the app on RabbitMQ: every set waits for the broker to confirm its
  invalidation ("the cost of coherence").

The variants of a group (memory, redis, amqp) run side by side in one event loop: each
round splits the operations into chunks and the variants take turns, chunk by chunk, so
that a slow spell of a shared machine hits all of them alike. ``set x64`` runs the sets 64
at a time (``asyncio.gather`` over batches of distinct keys), which lets concurrent writers
share one invalidation message. The peers of the ``*_peers`` variants hold the keys being
written (put into their stores before each chunk, untimed) and must have dropped every one
of them after it; the invalidation messages per set are counted on one peer during the
warm-up.

Targets: clusterbus memory store >= 1.5x cashews ``mem://`` (get, set, and combined: a 1:1
mix of gets and sets, i.e. ``2 / (1/get + 1/set)``); clusterbus redis store >= 0.9x raw
redis-py. The amqp figures are reported against the memory-mode set, without a target.
A ratio is the median of its per-round ratios (within a group the two figures of a round
were measured side by side, so their quotient moves less than either).

Run::

    python -m benchmarks.cache [--amqp-url URL] [--redis-url URL] [--ops N] [--rounds R]
                               [--skip-amqp]

The last line of stdout is one JSON object with every figure. The exit status is 0 even when
a target is missed; it is non-zero only when something broke (an error, a get that missed,
invalidations that did not arrive).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import msgpack
from aiocache import SimpleMemoryCache
from cashews import Cache as CashewsCache
from pydantic import SecretStr
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from benchmarks.cli import finite, positive
from bus import Bus, MemoryHub, Settings
from managers.cache import Cache

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
VALUE: dict[str, Any] = {"id": 123, "name": "alice", "roles": ["admin", "dev"], "active": True}
KEY_SPACE = 1000
KEYS = [f"user:{i}" for i in range(KEY_SPACE)]
CACHE_NAME = "bench"
INVALIDATION_CHANNEL = "cache.invalidate"
PEERS = 2
CONCURRENCY = 64
CHUNKS = 20
SETTLE_TIMEOUT = 15.0
SETTLE_POLL = 0.001
MEMORY_TARGET = 1.5
REDIS_TARGET = 0.9
CONSOLE_WIDTH = 150

GET, SET, SET_X64, COMBINED = "get", "set", "set_x64", "combined"
MEASURED = (SET, GET, SET_X64)
OPERATIONS = (GET, SET, COMBINED, SET_X64)

CLUSTERBUS_MEMORY = "clusterbus_memory"
CLUSTERBUS_MEMORY_PEERS = "clusterbus_memory_peers"
CLUSTERBUS_MEMORY_UNSTARTED = "clusterbus_memory_unstarted"
CASHEWS_MEM = "cashews_mem"
AIOCACHE_MEMORY = "aiocache_memory"
CLUSTERBUS_REDIS = "clusterbus_redis"
RAW_REDIS = "raw_redis"
CLUSTERBUS_AMQP_PEERS = "clusterbus_amqp_peers"

COMPARED = (GET, SET, COMBINED)
TARGETS = {
    (CLUSTERBUS_MEMORY, CASHEWS_MEM): MEMORY_TARGET,
    (CLUSTERBUS_REDIS, RAW_REDIS): REDIS_TARGET,
}

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
    exchanges = [f"{app}.pubsub.{INVALIDATION_CHANNEL}"]
    stack.push_async_callback(
        cleanup, "delete the exchange", lambda: delete_exchanges(url, exchanges)
    )
    subject = await with_peers(
        stack, CLUSTERBUS_AMQP_PEERS, lambda: Bus(app, amqp_url=url, settings=bench_settings())
    )
    subject.get = None  # a get never leaves the process: the memory-mode figure holds
    return [subject]


async def delete_exchanges(amqp_url: str, names: Sequence[str]) -> None:
    """Delete ``names`` on the broker through a short-lived connection."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        for name in names:
            await channel.exchange_delete(name)
    finally:
        await connection.close()


GroupFactory = Callable[[contextlib.AsyncExitStack, argparse.Namespace], Awaitable[list[Subject]]]


# the loops ---------------------------------------------------------------------------------


async def sequential_sets(set_: SetFn, keys: Sequence[str]) -> float:
    """Seconds to set every key of ``keys``, one after the other."""
    value = VALUE
    start = time.perf_counter()
    for key in keys:
        await set_(key, value)
    return time.perf_counter() - start


async def sequential_gets(get: GetFn, keys: Sequence[str]) -> float:
    """Seconds to get every key of ``keys``, one after the other."""
    start = time.perf_counter()
    for key in keys:
        await get(key)
    return time.perf_counter() - start


async def concurrent_sets(set_: SetFn, keys: Sequence[str]) -> float:
    """Seconds to set every key of ``keys``, ``CONCURRENCY`` at a time."""
    value = VALUE
    start = time.perf_counter()
    for first in range(0, len(keys), CONCURRENCY):
        await asyncio.gather(*[set_(key, value) for key in keys[first : first + CONCURRENCY]])
    return time.perf_counter() - start


async def run_operation(subject: Subject, operation: str, keys: Sequence[str]) -> float:
    """Run ``operation`` of ``subject`` over ``keys``; the seconds it took."""
    if operation == GET:
        assert subject.get is not None
        return await sequential_gets(subject.get, keys)
    peers = subject.peers
    if peers is not None:
        await peers.prime(keys)
    if operation == SET:
        seconds = await sequential_sets(subject.set, keys)
    else:
        seconds = await concurrent_sets(subject.set, keys)
    if peers is not None:
        await peers.settle()
    return seconds


async def warm_up(subject: Subject, operation: str, keys: Sequence[str]) -> None:
    """Run ``operation`` untimed; for the sets of a variant with peers, count the
    invalidation messages a peer receives per set."""
    if subject.peers is None or operation == GET:
        await run_operation(subject, operation, keys)
        return
    async with subject.peers.counting() as counter:
        await run_operation(subject, operation, keys)
        await counter.wait_for(len(keys))
    subject.messages[operation] = counter.messages / len(keys)


def key_run(start: int, count: int) -> list[str]:
    """``count`` keys of the key space in order, from the ``start``-th (wrapping around)."""
    return [KEYS[(start + i) % KEY_SPACE] for i in range(count)]


def chunk_sizes(total: int, chunks: int) -> list[int]:
    """``total`` split into ``chunks`` near-equal positive parts (fewer when total is small)."""
    chunks = max(1, min(chunks, total))
    base, extra = divmod(total, chunks)
    return [base + (1 if i < extra else 0) for i in range(chunks)]


async def check_hits(subject: Subject) -> None:
    """Every key of the key space reads back as the benchmark value."""
    if subject.get is None:
        return
    for key in KEYS:
        value = await subject.get(key)
        if value != VALUE:
            raise RuntimeError(f"{subject.name}: get({key!r}) returned {value!r}")


def copy_kind(got: object) -> str:
    """What a get returned for the benchmark value: ``"same object"`` as the one set, a
    ``"shallow copy"`` (the nested list is shared) or a ``"deep copy"``."""
    if got is VALUE:
        return "same object"
    if isinstance(got, dict) and got.get("roles") is VALUE["roles"]:
        return "shallow copy"
    return "deep copy"


@dataclass(slots=True)
class RoundResult:
    """The figures of one variant in one round: ops/s per operation."""

    ops_per_s: dict[str, float]
    messages_per_set: dict[str, float]
    copy: str | None
    index: int = 0  # which round


async def measure_group(subjects: list[Subject], ops: int) -> dict[str, RoundResult]:
    """Warm every variant up, then time each operation chunk by chunk, variants taking turns."""
    warmup = max(KEY_SPACE, ops // 10)
    for subject in subjects:
        for operation in MEASURED:
            if subject.measures(operation):
                await warm_up(subject, operation, key_run(0, warmup))
        await check_hits(subject)
    seconds = {s.name: dict.fromkeys(MEASURED, 0.0) for s in subjects}
    for operation in MEASURED:
        runners = [s for s in subjects if s.measures(operation)]
        gc.collect()
        start = 0
        for index, size in enumerate(chunk_sizes(ops, CHUNKS)):
            keys = key_run(start, size)
            start += size
            shift = index % len(runners) if runners else 0
            for subject in runners[shift:] + runners[:shift]:
                seconds[subject.name][operation] += await run_operation(subject, operation, keys)
    results: dict[str, RoundResult] = {}
    for subject in subjects:
        await check_hits(subject)
        rates = {op: ops / t for op, t in seconds[subject.name].items() if t > 0}
        if GET in rates and SET in rates:
            rates[COMBINED] = 2 / (1 / rates[GET] + 1 / rates[SET])
        copy = None if subject.get is None else copy_kind(await subject.get(KEYS[0]))
        results[subject.name] = RoundResult(
            ops_per_s=rates,
            messages_per_set=dict(subject.messages),
            copy=copy,
        )
    return results


# rounds and reports ------------------------------------------------------------------------


@dataclass(slots=True)
class VariantReport:
    """Every round of one variant and their medians."""

    name: str
    group: str
    rounds: list[RoundResult] = field(default_factory=list)

    def median(self, operation: str) -> float:
        """Median ops/s of ``operation`` over the rounds (NaN when not measured)."""
        values = [r.ops_per_s[operation] for r in self.rounds if operation in r.ops_per_s]
        return statistics.median(values) if values else math.nan

    def messages_per_set(self, operation: str) -> float:
        """Median invalidation messages per set received by the peers (NaN: no peers)."""
        values = [
            r.messages_per_set[operation] for r in self.rounds if operation in r.messages_per_set
        ]
        return statistics.median(values) if values else math.nan

    def copy(self) -> str | None:
        """What a get returns (see :func:`copy_kind`; None: no get measured)."""
        kinds = {r.copy for r in self.rounds} - {None}
        return kinds.pop() if len(kinds) == 1 else None

    def as_json(self) -> dict[str, object]:
        """The report as JSON-able data."""
        ops = {op: finite(self.median(op)) for op in OPERATIONS}
        return {
            "group": self.group,
            "description": DESCRIPTIONS[self.name],
            "ops_per_s": ops,
            "us_per_op": {op: finite(divide(1e6, self.median(op))) for op in OPERATIONS},
            "invalidation_messages_per_set": {
                op: finite(self.messages_per_set(op))
                for op in (SET, SET_X64)
                if any(op in r.messages_per_set for r in self.rounds)
            }
            or None,
            "get_returns": self.copy(),
            "rounds": [{op: finite(v) for op, v in r.ops_per_s.items()} for r in self.rounds],
        }


@dataclass(slots=True)
class Run:
    """Everything measured, and what broke."""

    reports: dict[str, VariantReport] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def paired_ratio(self, ours: str, op: str, reference: str, ref_op: str) -> float:
        """Median over the rounds of ``ours``'s ``op`` over ``reference``'s ``ref_op``
        (ops/s), pairing the figures of each round: the variants of a group were measured
        side by side, so their ratio within a round is the steadiest figure. NaN if none."""
        mine, theirs = self.reports.get(ours), self.reports.get(reference)
        if mine is None or theirs is None:
            return math.nan
        wanted = {r.index: r.ops_per_s.get(ref_op, math.nan) for r in theirs.rounds}
        values = [
            divide(r.ops_per_s.get(op, math.nan), wanted[r.index])
            for r in mine.rounds
            if r.index in wanted
        ]
        values = [v for v in values if math.isfinite(v)]
        return statistics.median(values) if values else math.nan


def groups(args: argparse.Namespace) -> dict[str, GroupFactory]:
    """The groups of variants to run, in order."""
    found: dict[str, GroupFactory] = {"memory": memory_group, "redis": redis_group}
    if not args.skip_amqp:
        found["amqp"] = amqp_group
    return found


async def run_group_round(
    factory: GroupFactory, args: argparse.Namespace
) -> dict[str, RoundResult]:
    """Set one group up, measure it, tear it down."""
    async with contextlib.AsyncExitStack() as stack:
        subjects = await factory(stack, args)
        return await measure_group(subjects, args.ops)


async def run_all(args: argparse.Namespace) -> Run:
    """Every round of every group; a group that breaks is reported and the rest goes on."""
    run = Run()
    for index in range(args.rounds):
        for group, factory in groups(args).items():
            log(f"round {index + 1}/{args.rounds}: {group}")
            try:
                results = await run_group_round(factory, args)
            except Exception as exc:
                log(f"  {group} failed: {type(exc).__name__}: {exc}")
                run.errors.append(f"{group} round {index + 1}: {type(exc).__name__}: {exc}")
                continue
            for name, result in results.items():
                result.index = index
                run.reports.setdefault(name, VariantReport(name, group)).rounds.append(result)
                figures = ", ".join(f"{op} {v:,.0f}/s" for op, v in result.ops_per_s.items())
                log(f"  {name}: {figures}")
    return run


@dataclass(slots=True, frozen=True)
class Ratio:
    """One comparison (ops/s over ops/s, higher is better), with an optional target."""

    label: str
    value: float
    target: float | None

    @property
    def met(self) -> bool | None:
        """Whether the target was met (None: no target, or no figure)."""
        if self.target is None or not math.isfinite(self.value):
            return None
        return self.value >= self.target

    def as_json(self) -> dict[str, object]:
        """The comparison as JSON-able data."""
        return {
            "label": self.label,
            "ratio": finite(self.value),
            "target": self.target,
            "met": self.met,
        }


def ratios(run: Run) -> list[Ratio]:
    """Every comparison that has figures: the targets first, then the informative ones."""

    def ratio(label: str, ours: str, reference: str, op: str, ref_op: str = "") -> Ratio:
        target = TARGETS.get((ours, reference)) if not ref_op else None
        value = run.paired_ratio(ours, op, reference, ref_op or op)
        return Ratio(f"{label}: {ours} / {reference}", value, target)

    found = [ratio(f"memory {op}", CLUSTERBUS_MEMORY, CASHEWS_MEM, op) for op in COMPARED]
    found += [ratio(f"redis {op}", CLUSTERBUS_REDIS, RAW_REDIS, op) for op in COMPARED]
    found += [ratio(f"memory {op}", CLUSTERBUS_MEMORY, AIOCACHE_MEMORY, op) for op in COMPARED]
    found += [
        ratio("coherence, set", CLUSTERBUS_AMQP_PEERS, CLUSTERBUS_MEMORY, SET),
        ratio("coherence, set x64", CLUSTERBUS_AMQP_PEERS, CLUSTERBUS_MEMORY, SET_X64),
        ratio(
            "batching, set x64 over set",
            CLUSTERBUS_AMQP_PEERS,
            CLUSTERBUS_AMQP_PEERS,
            SET_X64,
            SET,
        ),
        ratio("memory-mode peers, set", CLUSTERBUS_MEMORY_PEERS, CLUSTERBUS_MEMORY, SET),
        ratio("no invalidation, set", CLUSTERBUS_MEMORY_UNSTARTED, CLUSTERBUS_MEMORY, SET),
    ]
    return [r for r in found if math.isfinite(r.value)]


def divide(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when the denominator is 0 or NaN."""
    if not denominator or not math.isfinite(denominator):
        return math.nan
    return numerator / denominator


def log(text: str) -> None:
    """Progress on stderr, keeping stdout for the report."""
    print(text, file=sys.stderr, flush=True)


def cell(ops_per_s: float) -> str:
    """A table cell: ops/s and µs per op, or a dash when not measured."""
    if not math.isfinite(ops_per_s):
        return "-"
    return f"{ops_per_s:,.0f} ({1e6 / ops_per_s:.2f} µs)"


def messages_cell(report: VariantReport) -> str:
    """Invalidation messages per set (sequential / x64) received by the peers."""
    values = [report.messages_per_set(op) for op in (SET, SET_X64)]
    if not any(math.isfinite(v) for v in values):
        return "-"
    return " / ".join(f"{v:.3f}" if math.isfinite(v) else "-" for v in values)


def print_tables(console: Console, run: Run, args: argparse.Namespace) -> None:
    """The figures per variant and what each variant is, then the ratios with targets."""
    table = Table(
        title=f"cache ops/s (µs per op): {args.ops} ops per figure, sequential unless x"
        f"{CONCURRENCY}, {KEY_SPACE} keys, median of {args.rounds} round(s)"
    )
    headers = (
        "variant",
        "get",
        "set",
        "combined 1:1",
        f"set x{CONCURRENCY}",
        "inval msgs/set\n(set / x64)",
        "get returns",
    )
    for header in headers:
        table.add_column(header, justify="left" if header == "variant" else "right")
    for report in run.reports.values():
        table.add_row(
            report.name,
            *(cell(report.median(op)) for op in OPERATIONS),
            messages_cell(report),
            report.copy() or "-",
        )
    console.print(table)
    for report in run.reports.values():
        console.print(f"  {report.name}: {DESCRIPTIONS[report.name]}", highlight=False)
    targets = Table(title="ratios (higher is better), median of the per-round ratios")
    for header in ("comparison", "ratio", "target", "verdict"):
        targets.add_column(header, justify="left" if header == "comparison" else "right")
    for ratio in ratios(run):
        targets.add_row(
            ratio.label,
            f"{ratio.value:.3f}",
            "-" if ratio.target is None else f">= {ratio.target}",
            {True: "MET", False: "MISSED", None: "info"}[ratio.met],
        )
    console.print(targets)
    for error in run.errors:
        console.print(f"[red]error:[/red] {error}", highlight=False)


def make_console() -> Console:
    """A console for the report; wide enough for the table when stdout is not a terminal."""
    console = Console()
    return console if console.is_terminal else Console(width=CONSOLE_WIDTH)


def report_json(run: Run, args: argparse.Namespace) -> str:
    """The one-line JSON report."""
    found = ratios(run)
    return json.dumps(
        {
            "benchmark": "cache",
            "ops": args.ops,
            "rounds": args.rounds,
            "key_space": KEY_SPACE,
            "value": VALUE,
            "value_bytes": len(msgpack.packb(VALUE)),
            "concurrency": CONCURRENCY,
            "variants": {name: report.as_json() for name, report in run.reports.items()},
            "ratios": [ratio.as_json() for ratio in found],
            "targets_met": all(r.met for r in found if r.met is not None),
            "errors": run.errors,
            "ok": not run.errors,
        },
        allow_nan=False,
    )


# command line ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cache",
        description=__doc__.split("\n", 1)[0] if __doc__ else None,
    )
    parser.add_argument("--amqp-url", default=DEFAULT_AMQP_URL, help="RabbitMQ URL")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="Redis URL")
    parser.add_argument("--ops", type=positive, default=20_000, help="operations per figure")
    parser.add_argument("--rounds", type=positive, default=3, help="rounds per variant")
    parser.add_argument("--skip-amqp", action="store_true", help="no RabbitMQ variant")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the report; 1 when something broke."""
    args = parse_args(argv)
    run = asyncio.run(run_all(args))
    console = make_console()
    print_tables(console, run, args)
    print(report_json(run, args), flush=True)
    return 0 if not run.errors and run.reports else 1


if __name__ == "__main__":
    sys.exit(main())

"""One process of the lock chaos run (driven by :mod:`tests.faults.stress_locks`).

``python -m tests.faults.lock_chaos_worker CONFIG_JSON``: a Bus on ``url`` (the driver's
fault proxy) and ``tasks`` tasks, each looping until the driver closes this process's
standard input: pick a key, acquire it (``lock()``, ``acquire()`` or ``try_acquire()``),
hold it briefly (sometimes past its ttl), release; and cancel itself at random (an
``asyncio.timeout``, an ``anyio.move_on_after``, a sibling task cancelling after a random
number of loop turns, once or twice, an acquire ``timeout``).

Holding is recorded two ways:

* online, in Redis: ``INCR <app>:holders:<key>`` when a holder enters, ``DECR`` when it
  leaves or at the moment it is told its lease is lost (``lease.lost``). An INCR that does
  not answer 1 is a *suspect* (counted, and kept in the record);
* as intervals, in ``<log_dir>/<name>.jsonl``: an ``enter`` record (key, token, time) as
  the holder enters and an ``exit`` record when it stops counting as a holder: when it
  leaves the section, or when it is told the lease is lost, whichever comes first. Times are
  ``time.monotonic()``, one clock for every process of the host (Linux CLOCK_MONOTONIC).

The driver judges overlaps on the intervals: two holders of one key overlap when neither had
been told it was lost (SPEC, "Never two holders"). The Redis counter cannot tell a real
overlap from a DECR still in flight when a lease is lost, so its suspects are reported, not
judged.

Prints ``ready`` once the bus is started, and a JSON summary line at the end.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from bus import Bus, BusUnavailable, LockAcquireError, LockLost, Settings
from bus.logs import configure_logging
from managers.locks import Lease

T = TypeVar("T")

EXPECTED_ERRORS = (LockAcquireError, LockLost, BusUnavailable)
"""What a lock user may see under faults; anything else is reported as unexpected."""


@dataclass
class WorkerConfig:
    name: str
    url: str
    app: str
    redis_url: str
    log_dir: str
    keys: list[str]
    seed: int
    tasks: int = 2
    heartbeat: float = 2.0
    publish_timeout: float = 2.0
    ttl: tuple[float, float] = (2.0, 5.0)
    overstay: float = 0.015
    """Share of sections that hold past their ttl (the ttl watchdog's path)."""
    cancel_weights: dict[str, float] = field(
        default_factory=lambda: {
            "none": 4.0,
            "timeout": 1.5,
            "anyio": 1.5,
            "sibling": 2.0,
            "acquire_timeout": 1.0,
        }
    )


@dataclass
class Counts:
    rounds: int = 0
    acquired: int = 0
    released: int = 0
    lost: int = 0
    lost_reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    cancelled_waiting: int = 0
    cancelled_holding: int = 0
    returned_despite_cancel: int = 0
    acquire_errors: int = 0
    lock_lost_errors: int = 0
    unavailable: int = 0
    unexpected: collections.Counter[str] = field(default_factory=collections.Counter)
    unexpected_examples: list[str] = field(default_factory=list)
    suspects: int = 0
    styles: collections.Counter[str] = field(default_factory=collections.Counter)
    cancels: collections.Counter[str] = field(default_factory=collections.Counter)

    def as_json(self) -> dict[str, Any]:
        return {
            name: dict(value) if isinstance(value, collections.Counter) else value
            for name, value in vars(self).items()
        }


async def finish(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` to its end even if this task is cancelled (once, twice, or at every
    await by an anyio scope) meanwhile; the cancellation is raised again afterwards."""
    task = asyncio.get_running_loop().create_task(coro)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            cancelled = exc
    if cancelled is not None:
        raise cancelled  # the same instance: an anyio scope recognises its own
    return task.result()


class Holding:
    """One holder: counts in Redis and in the interval log from ``enter`` until ``leave`` or
    the moment its lease is told lost."""

    def __init__(self, worker: Worker, key: str, lease: Lease) -> None:
        self.worker = worker
        self.key = key
        self.lease = lease
        self.number = next(worker.numbers)
        self.open = False
        self.watcher: asyncio.Task[None] | None = None

    async def enter(self) -> None:
        worker = self.worker
        entered = time.monotonic()
        self.open = True
        worker.counts.acquired += 1
        worker.record(
            {"ev": "enter", "n": self.number, "key": self.key, "token": self.lease.token},
            entered,
        )
        if self.lease.lost.is_set():  # lost before we could even count it
            self._close("lost", "lost before entering")
            return
        self.watcher = asyncio.get_running_loop().create_task(self._watch())
        count = await finish(worker.redis.incr(worker.holders(self.key)))
        await finish(worker.redis.incr(worker.acquired_key(self.key)))
        if count != 1:
            worker.counts.suspects += 1
            worker.record({"ev": "suspect", "n": self.number, "key": self.key, "incr": count})

    async def _watch(self) -> None:
        await self.lease.lost.wait()
        # this runs one loop turn after lost.set(), before the lease's release starts
        if self.open:
            reason = getattr(self.lease, "lost_reason", None) or "lost"
            self._close("lost", str(reason))
            await self.worker.redis.decr(self.worker.holders(self.key))

    def _close(self, how: str, reason: str | None = None) -> None:
        self.open = False
        self.worker.record({"ev": "exit", "n": self.number, "how": how, "reason": reason})
        if how == "lost":
            self.worker.counts.lost += 1
            self.worker.counts.lost_reasons[_reason_kind(reason)] += 1

    async def leave(self) -> None:
        """The section ends (normally or not): stop counting, unless already told lost."""
        if not self.open:
            return  # told lost: the watcher stopped counting (and finishes its DECR)
        if self.watcher is not None:
            self.watcher.cancel()  # still waiting for a loss
        lost = self.lease.lost.is_set()
        self._close("lost" if lost else "left", "lost, seen at exit" if lost else None)
        await finish(self.worker.redis.decr(self.worker.holders(self.key)))


def _reason_kind(reason: str | None) -> str:
    text = (reason or "").lower()
    for kind in ("ttl", "stopping", "channel", "connection", "consumer", "heartbeat", "queue"):
        if kind in text:
            return kind
    return text[:40] or "unknown"


class Worker:
    def __init__(self, config: WorkerConfig, redis: Any, log: IO[str]) -> None:
        self.config = config
        self.redis = redis
        self.counts = Counts()
        self.numbers = iter(range(1, 1 << 62))
        self._log = log
        self._stop = asyncio.Event()
        self.bus: Bus | None = None

    def holders(self, key: str) -> str:
        return f"{self.config.app}:holders:{key}"

    def acquired_key(self, key: str) -> str:
        return f"{self.config.app}:acquired:{key}"

    def record(self, event: dict[str, Any], at: float | None = None) -> None:
        event["t"] = time.monotonic() if at is None else at
        event["w"] = self.config.name
        self._log.write(json.dumps(event) + "\n")
        self._log.flush()

    # the loop of one task ------------------------------------------------------------------

    async def run_task(self, number: int) -> None:
        rng = random.Random(self.config.seed * 1000 + number)
        while not self._stop.is_set():
            self.counts.rounds += 1
            try:
                await self._round(rng)
            except asyncio.CancelledError:
                if self._stop.is_set():
                    raise
                task = asyncio.current_task()
                assert task is not None
                while task.cancelling():  # our own cancellation (sibling), not a stop
                    task.uncancel()
            await asyncio.sleep(rng.uniform(0, 0.01))

    async def _round(self, rng: random.Random) -> None:
        config = self.config
        key = rng.choice(config.keys)
        ttl = rng.uniform(*config.ttl)
        hold = (
            rng.uniform(ttl, ttl + 1.0) if rng.random() < config.overstay else rng.uniform(0, 0.03)
        )
        style = rng.choices(["lock", "acquire", "try"], [3, 2, 1])[0]
        kinds, weights = zip(*config.cancel_weights.items(), strict=True)
        cancel = rng.choices(kinds, weights)[0]
        self.counts.styles[style] += 1
        self.counts.cancels[cancel] += 1
        timeout = rng.uniform(0, 1.0) if cancel == "acquire_timeout" else None
        body = self._hold(key, ttl, hold, style=style, timeout=timeout, rng=rng)
        if cancel == "timeout":
            await self._expected(self._under_timeout(body, rng.uniform(0, 0.3)))
        elif cancel == "anyio":
            await self._expected(self._under_anyio(body, rng.uniform(0, 0.3)))
        elif cancel == "sibling":
            await self._expected(self._cancelled_by_sibling(body, rng))
        else:
            await self._expected(body)

    async def _under_timeout(self, body: Awaitable[None], seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await body

    async def _under_anyio(self, body: Awaitable[None], seconds: float) -> None:
        import anyio

        with anyio.move_on_after(seconds):
            await body

    async def _cancelled_by_sibling(
        self, body: Coroutine[Any, Any, None], rng: random.Random
    ) -> None:
        task = asyncio.get_running_loop().create_task(body)
        turns, twice = rng.randint(1, 60), rng.random() < 0.3

        async def canceller() -> None:
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            if twice:
                await asyncio.sleep(0)
                task.cancel()

        killer = asyncio.get_running_loop().create_task(canceller())
        try:
            await asyncio.wait({task})
        finally:
            fired = killer.done()
            killer.cancel()
            if not task.done():  # we were stopped: stop the round too
                task.cancel()
                await asyncio.wait({task})
        if not task.cancelled():
            if fired and task.exception() is None:
                self.counts.returned_despite_cancel += 1
            task.result()  # re-raise what the round raised

    async def _expected(self, body: Awaitable[None]) -> None:
        try:
            await body
        except LockAcquireError:
            self.counts.acquire_errors += 1
        except LockLost:
            self.counts.lock_lost_errors += 1
        except BusUnavailable:
            self.counts.unavailable += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # what a user of the library should never see
            name = type(exc).__name__
            where = " < ".join(
                f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"
                for frame in reversed(traceback.extract_tb(exc.__traceback__)[-4:])
            )
            text = f"{name}: {exc!r} at {where}"[:600]
            self.counts.unexpected[name] += 1
            self.record({"ev": "unexpected", "error": text})
            if len(self.counts.unexpected_examples) < 5:
                self.counts.unexpected_examples.append(text)

    # one holding, three ways -----------------------------------------------------------------

    async def _hold(
        self,
        key: str,
        ttl: float,
        hold: float,
        *,
        style: str,
        timeout: float | None,
        rng: random.Random,
    ) -> None:
        bus = self.bus
        assert bus is not None
        holding: Holding | None = None
        acquired = False
        try:
            if style == "lock":
                async with bus.locks.lock(key, ttl=ttl, timeout=timeout) as lease:
                    acquired = True
                    holding = Holding(self, key, lease)
                    try:
                        await holding.enter()
                        await asyncio.sleep(hold)
                    finally:
                        await finish(holding.leave())
                self.counts.released += 1
                return
            if style == "try":
                lease = await bus.locks.try_acquire(
                    key, timeout=rng.choice([0.0, 0.1, 0.5]), ttl=ttl
                )
            else:
                lease = await bus.locks.acquire(key, ttl=ttl, timeout=timeout)
            acquired = True
            holding = Holding(self, key, lease)
            try:
                await holding.enter()
                await asyncio.sleep(hold)
            finally:
                try:
                    await finish(holding.leave())
                finally:
                    await lease.release()  # may be cancelled itself: the library must cope
            self.counts.released += 1
        except asyncio.CancelledError:
            if acquired:
                self.counts.cancelled_holding += 1
            else:
                self.counts.cancelled_waiting += 1
            raise

    # life cycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        config = self.config
        settings = Settings(
            heartbeat=config.heartbeat,
            publish_timeout=config.publish_timeout,
            connect_timeout=10.0,
            reconnect_interval=0.5,
            stop_timeout=2.0,
            log_level="WARNING",
            log_format="json",
        )
        async with Bus(config.app, amqp_url=config.url, settings=settings) as bus:
            self.bus = bus
            print("ready", flush=True)
            loop = asyncio.get_running_loop()
            tasks = [loop.create_task(self.run_task(n)) for n in range(config.tasks)]
            await _stdin_closed()
            self._stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.record({"ev": "stopping"})
        self.record({"ev": "stopped"})


async def _stdin_closed() -> None:
    """Wait until the driver closes our standard input (or sends a line)."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)


@contextlib.asynccontextmanager
async def _redis(url: str) -> AsyncIterator[Any]:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        yield client
    finally:
        await client.aclose()


async def main(config: WorkerConfig) -> dict[str, Any]:
    configure_logging(format="json", level="WARNING")
    log_path = Path(config.log_dir) / f"{config.name}.jsonl"
    with log_path.open("a", encoding="utf-8") as log:
        async with _redis(config.redis_url) as redis:
            worker = Worker(config, redis, log)
            await worker.run()
    return {"worker": config.name, **worker.counts.as_json()}


def _config_from(text: str) -> WorkerConfig:
    raw = json.loads(text)
    raw["ttl"] = tuple(raw["ttl"])
    return WorkerConfig(**raw)


if __name__ == "__main__":
    summary = asyncio.run(main(_config_from(sys.argv[1])))
    print(json.dumps(summary), flush=True)

"""Lock exclusion under faults: several processes contend for a few keys while each one's
network to the broker is cut, stalled and delayed at random, and their lock calls are
cancelled at random points.

Each worker (:mod:`tests.faults.lock_chaos_worker`) is a process with its own Bus talking to
the real broker through its own :class:`~tests.faults.proxy.FaultProxy`, so a fault hits one
instance the way a partition hits one node. The driver here:

1. starts one proxy and one worker per instance;
2. for ``seconds``, injects faults on random proxies, one at a time per proxy: a reset (a
   blip), an outage (reset and refuse for a while), a one-sided reset (only the broker or only
   the client learns), a stall of one or both directions (shorter or longer than the heartbeat
   budgets), a delay;
3. heals every proxy and waits until every key was acquired again by some worker (a key that
   is not within ``settle_within`` is *stuck*);
4. stops the workers (gracefully), then acquires every key from a bus of its own, which must
   succeed within ``final_within`` (default ``publish_timeout + 2 * heartbeat``);
5. reads the holders' intervals and judges: never two holders of a key at once that had not
   been told their lease was lost; fencing tokens increase from holder to holder.

``python -m tests.faults.stress_locks --seconds 300`` runs it by hand (``--help``); the test
suite runs a short version and ``make chaos`` a long one (tests/faults/test_lock_chaos.py).
Prints one JSON summary line; exits 1 when a promise was broken.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bus import Bus, LockAcquireError, Settings
from tests.faults.lock_chaos_worker import WorkerConfig
from tests.faults.proxy import Direction, FaultProxy

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

FAULTS: dict[str, float] = {
    "blip": 1.0,  # reset both sides, reconnect at once
    "outage": 1.0,  # reset and refuse new connections for a while
    "cut_up": 1.0,  # reset the broker's side only: the client learns by heartbeat
    "cut_down": 1.0,  # reset the client's side only: the broker learns by heartbeat
    "stall": 1.5,  # both directions silent, sockets open
    "stall_up": 1.0,
    "stall_down": 1.0,
    "delay": 1.0,
}
"""Fault kinds and their weights."""


@dataclass
class ChaosConfig:
    seconds: float = 30.0
    """How long faults are injected."""
    workers: int = 3
    tasks: int = 2
    """Concurrent lock users per worker."""
    keys: int = 4
    heartbeat: float = 2.0
    publish_timeout: float = 2.0
    seed: int = field(default_factory=lambda: random.randrange(1 << 30))
    amqp_url: str = DEFAULT_AMQP_URL
    redis_url: str = DEFAULT_REDIS_URL
    app: str = field(default_factory=lambda: f"chaos-{random.randrange(1 << 30):08x}")
    """Not ``t-...``: the test suite's session clean-up deletes those queues, and a parallel
    session would delete this run's lock queues under its holders. The run deletes its own
    exchanges and queues at the end (lock queues also expire by themselves)."""
    log_dir: Path | None = None
    """Where the workers' interval logs and stderr go (a temporary directory if None)."""
    fault_gap: tuple[float, float] = (0.3, 2.0)
    """Pause between two fault injections (somewhere), in seconds."""
    stall_seconds: tuple[float, float] = (0.5, 10.0)
    """Stalls range from shorter than any heartbeat budget to longer than the client's."""
    settle_within: float = 60.0
    final_within: float | None = None
    faults: dict[str, float] = field(default_factory=lambda: dict(FAULTS))
    """Fault kinds and weights (empty: no faults)."""
    cancels: bool = True
    """Whether the workers cancel their own lock calls at random."""

    @property
    def key_names(self) -> list[str]:
        return [f"key-{i}" for i in range(self.keys)]


@dataclass
class Interval:
    """One holder of one key: from ``start`` (it entered) to ``end`` (it left, or was told
    its lease was lost: ``how`` says which)."""

    worker: str
    n: int
    key: str
    token: int
    start: float
    end: float = math.inf
    how: str = "open"
    reason: str | None = None


@dataclass
class Fault:
    """One fault on one worker's proxy, from ``start`` to ``end`` (monotonic seconds)."""

    worker: str
    kind: str
    start: float
    end: float = math.inf
    detail: str = ""


@dataclass
class Overlap:
    key: str
    first: Interval
    second: Interval
    faults: list[Fault] = field(default_factory=list)
    """Faults on either holder's proxy in the 20 s before the overlap ended."""

    @property
    def seconds(self) -> float:
        return min(self.first.end, self.second.end) - self.second.start

    def describe(self, origin: float = 0.0) -> str:
        a, b = self.first, self.second
        faults = ", ".join(
            f"{f.kind}{f.detail} on {f.worker} at {f.start - origin:.2f}-{f.end - origin:.2f}s"
            for f in self.faults
        )
        return (
            f"{self.key}: {a.worker}#{a.n} (token {a.token}, from {a.start - origin:.3f}s, "
            f"{a.how} at {a.end - origin:.3f}s: {a.reason}) and {b.worker}#{b.n} (token "
            f"{b.token}, from {b.start - origin:.3f}s) held it together for "
            f"{self.seconds:.3f}s; faults: {faults or 'none'}"
        )


@dataclass
class ChaosReport:
    config: dict[str, Any]
    elapsed: float = 0.0
    workers: list[dict[str, Any]] = field(default_factory=list)
    worker_failures: list[str] = field(default_factory=list)
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    intervals: int = 0
    overlaps: list[Overlap] = field(default_factory=list)
    token_regressions: list[str] = field(default_factory=list)
    max_gap: dict[str, float] = field(default_factory=dict)
    settle_seconds: dict[str, float] = field(default_factory=dict)
    stuck_keys: list[str] = field(default_factory=list)
    final_seconds: dict[str, float] = field(default_factory=dict)
    final_failures: list[str] = field(default_factory=list)
    holders_left: dict[str, int] = field(default_factory=dict)
    fault_log: list[Fault] = field(default_factory=list)
    log_events: collections.Counter[str] = field(default_factory=collections.Counter)
    """The workers' WARNING-and-up log events, by name."""
    origin: float = 0.0
    """When the faults began (monotonic): times in descriptions count from here."""
    log_dir: str = ""

    def total(self, name: str) -> int:
        return sum(int(w.get(name, 0)) for w in self.workers)

    def totals(self, name: str) -> dict[str, int]:
        found: collections.Counter[str] = collections.Counter()
        for worker in self.workers:
            found.update(worker.get(name, {}))
        return dict(found)

    def problems(self) -> list[str]:
        """Every broken promise, in words (empty when the run passed)."""
        found = [f"overlap: {o.describe(self.origin)}" for o in self.overlaps[:10]]
        if len(self.overlaps) > 10:
            found.append(f"... {len(self.overlaps) - 10} more overlaps")
        found += [f"token order: {t}" for t in self.token_regressions[:5]]
        found += [f"stuck after healing: {k}" for k in self.stuck_keys]
        found += [f"not acquirable at the end: {f}" for f in self.final_failures]
        found += [f"worker: {f}" for f in self.worker_failures]
        unexpected = self.totals("unexpected")
        if unexpected:
            examples = [e for w in self.workers for e in w.get("unexpected_examples", [])]
            found.append(f"unexpected errors {unexpected}: {examples[:3]}")
        return found

    def summary(self) -> dict[str, Any]:
        return {
            "lock_chaos": "ok" if not self.problems() else "FAILED",
            "seed": self.config["seed"],
            "seconds": self.config["seconds"],
            "elapsed_s": round(self.elapsed, 1),
            "workers": self.config["workers"],
            "tasks_per_worker": self.config["tasks"],
            "keys": self.config["keys"],
            "heartbeat_s": self.config["heartbeat"],
            "acquisitions": self.total("acquired"),
            "released": self.total("released"),
            "lost": self.total("lost"),
            "lost_reasons": self.totals("lost_reasons"),
            "cancelled_waiting": self.total("cancelled_waiting"),
            "cancelled_holding": self.total("cancelled_holding"),
            "returned_despite_cancel": self.total("returned_despite_cancel"),
            "acquire_errors": self.total("acquire_errors"),
            "lock_lost_errors": self.total("lock_lost_errors"),
            "unavailable": self.total("unavailable"),
            "unexpected": self.totals("unexpected"),
            "faults": dict(self.faults),
            "overlaps": len(self.overlaps),
            "overlap_s_max": round(max((o.seconds for o in self.overlaps), default=0.0), 3),
            "redis_suspects": self.total("suspects"),
            "token_regressions": len(self.token_regressions),
            "max_gap_s": {k: round(v, 2) for k, v in self.max_gap.items()},
            "settle_s": {k: round(v, 2) for k, v in self.settle_seconds.items()},
            "stuck_keys": self.stuck_keys,
            "final_acquire_s": {k: round(v, 3) for k, v in self.final_seconds.items()},
            "final_failures": self.final_failures,
            "holders_left": self.holders_left,
            "log_events": dict(self.log_events.most_common(12)),
            "worker_failures": self.worker_failures,
            "problems": self.problems()[:5],
            "log_dir": self.log_dir,
        }


# judging the intervals ------------------------------------------------------------------------


def read_intervals(log_dir: Path) -> list[Interval]:
    """The holders recorded by the workers in ``log_dir/*.jsonl``; a holder with no exit
    record (its worker died) is open until the end of time."""
    intervals: list[Interval] = []
    for path in sorted(log_dir.glob("*.jsonl")):
        open_ones: dict[int, Interval] = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            event = json.loads(line)
            if event["ev"] == "enter":
                interval = Interval(
                    event["w"], event["n"], event["key"], event["token"], event["t"]
                )
                open_ones[interval.n] = interval
                intervals.append(interval)
            elif event["ev"] == "exit" and event["n"] in open_ones:
                interval = open_ones.pop(event["n"])
                interval.end, interval.how, interval.reason = (
                    event["t"],
                    event["how"],
                    event.get("reason"),
                )
    return intervals


def find_overlaps(intervals: Iterable[Interval]) -> list[Overlap]:
    """Pairs of holders of one key whose intervals intersect."""
    found: list[Overlap] = []
    for key, held in _by_key(intervals).items():
        active: list[Interval] = []
        for interval in held:
            active = [a for a in active if a.end > interval.start]
            found.extend(Overlap(key, a, interval) for a in active)
            active.append(interval)
    return found


def token_regressions(intervals: Iterable[Interval]) -> list[str]:
    """Successive holders of a key whose fencing token did not increase."""
    found: list[str] = []
    for key, held in _by_key(intervals).items():
        for before, after in itertools.pairwise(held):
            if after.token <= before.token:
                found.append(
                    f"{key}: {after.worker}#{after.n} got token {after.token} after "
                    f"{before.worker}#{before.n}'s {before.token} (then {after.how} after "
                    f"{after.end - after.start:.3f}s: {after.reason})"
                )
    return found


def max_gaps(
    intervals: Iterable[Interval], keys: Iterable[str], start: float, end: float
) -> dict[str, float]:
    """Per key, the longest time between ``start``, successive acquisitions and ``end``."""
    gaps: dict[str, float] = {}
    grouped = _by_key(intervals)
    for key in keys:
        times = [start, *(i.start for i in grouped.get(key, []) if start <= i.start <= end), end]
        gaps[key] = max(b - a for a, b in itertools.pairwise(times))
    return gaps


def _by_key(intervals: Iterable[Interval]) -> dict[str, list[Interval]]:
    grouped: dict[str, list[Interval]] = collections.defaultdict(list)
    for interval in intervals:
        grouped[interval.key].append(interval)
    return {key: sorted(held, key=lambda i: i.start) for key, held in grouped.items()}


# the run -------------------------------------------------------------------------------------


class _Worker:
    def __init__(self, name: str, proxy: FaultProxy, process: asyncio.subprocess.Process):
        self.name = name
        self.proxy = proxy
        self.process = process


async def _spawn(config: ChaosConfig, name: str, proxy: FaultProxy, log_dir: Path) -> _Worker:
    worker_config = WorkerConfig(
        name=name,
        url=proxy.url(),
        app=config.app,
        redis_url=config.redis_url,
        log_dir=str(log_dir),
        keys=config.key_names,
        seed=config.seed + int(name.removeprefix("w")),
        tasks=config.tasks,
        heartbeat=config.heartbeat,
        publish_timeout=config.publish_timeout,
    )
    if not config.cancels:
        worker_config.cancel_weights = {"none": 1.0}
    with (log_dir / f"{name}.stderr").open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.faults.lock_chaos_worker",
            json.dumps(asdict(worker_config)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            cwd=ROOT,
        )
    return _Worker(name, proxy, process)


async def _read_line(process: asyncio.subprocess.Process, within: float) -> str:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), within)
    return line.decode().strip()


_STALLS: dict[str, Direction] = {"stall": "both", "stall_up": "up", "stall_down": "down"}
_DIRECTIONS: list[Direction] = ["up", "down", "both"]


async def _fault(proxy: FaultProxy, fault: Fault, rng: random.Random, config: ChaosConfig) -> None:
    """Apply ``fault`` to ``proxy`` and end it; ``fault.end`` says when it ended."""
    kind = fault.kind
    try:
        if kind == "blip":
            await proxy.cut(refuse=False)
        elif kind == "outage":
            await proxy.cut(refuse=True)
            await asyncio.sleep(rng.uniform(0.2, 4.0))
            await proxy.restore()
        elif kind in ("cut_up", "cut_down"):
            await proxy.cut("up" if kind == "cut_up" else "down", refuse=False)
        elif kind.startswith("stall"):
            proxy.stall(_STALLS[kind])
            try:
                await asyncio.sleep(rng.uniform(*config.stall_seconds))
            finally:
                proxy.unstall()
        elif kind == "delay":
            seconds, direction = rng.uniform(0.01, 0.4), rng.choice(_DIRECTIONS)
            fault.detail = f"({seconds:.2f}s {direction})"
            proxy.delay(seconds, direction)
            try:
                await asyncio.sleep(rng.uniform(0.5, 6.0))
            finally:
                proxy.delay(0.0)
        else:
            raise ValueError(f"unknown fault {kind!r}")
    finally:
        fault.end = time.monotonic()


async def _inject_faults(
    proxies: Sequence[FaultProxy], config: ChaosConfig, report: ChaosReport
) -> None:
    rng = random.Random(config.seed)
    loop = asyncio.get_running_loop()
    until = loop.time() + config.seconds
    busy: dict[int, asyncio.Task[None]] = {}
    if not config.faults:
        await asyncio.sleep(config.seconds)
        return
    kinds, weights = zip(*config.faults.items(), strict=True)
    try:
        while loop.time() < until:
            await asyncio.sleep(rng.uniform(*config.fault_gap))
            free = [i for i in range(len(proxies)) if i not in busy or busy[i].done()]
            if not free:
                continue
            index = rng.choice(free)
            fault = Fault(f"w{index}", rng.choices(kinds, weights)[0], time.monotonic())
            report.faults[fault.kind] += 1
            report.fault_log.append(fault)
            busy[index] = loop.create_task(_fault(proxies[index], fault, rng, config))
    finally:
        for task in busy.values():
            task.cancel()
        await asyncio.gather(*busy.values(), return_exceptions=True)
        for proxy in proxies:
            await proxy.heal()
        healed = time.monotonic()
        for fault in report.fault_log:
            fault.end = min(fault.end, healed)  # a fault cancelled before it began


def _faults_near(overlap: Overlap, faults: Iterable[Fault], before: float = 20.0) -> list[Fault]:
    workers = {overlap.first.worker, overlap.second.worker}
    until = min(overlap.first.end, overlap.second.end)
    return [
        f for f in faults if f.worker in workers and f.start <= until and f.end >= until - before
    ]


def _log_events(log_dir: Path) -> collections.Counter[str]:
    """The workers' log events (JSON lines on their stderr), by name."""
    found: collections.Counter[str] = collections.Counter()
    for path in log_dir.glob("*.stderr"):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError, AttributeError):
                found[str(json.loads(line).get("event"))] += 1
    return found


async def _acquired_counts(redis: Any, config: ChaosConfig) -> dict[str, int]:
    values = await redis.mget([f"{config.app}:acquired:{k}" for k in config.key_names])
    return {k: int(v or 0) for k, v in zip(config.key_names, values, strict=True)}


async def _settle(redis: Any, config: ChaosConfig, report: ChaosReport) -> None:
    """Every key must be acquired again by some worker once the network is healed."""
    loop = asyncio.get_running_loop()
    healed = loop.time()
    before = await _acquired_counts(redis, config)
    waiting = set(config.key_names)
    while waiting and loop.time() - healed < config.settle_within:
        await asyncio.sleep(0.1)
        now = await _acquired_counts(redis, config)
        for key in [k for k in waiting if now[k] > before[k]]:
            waiting.discard(key)
            report.settle_seconds[key] = loop.time() - healed
    report.stuck_keys = sorted(waiting)


async def _stop(worker: _Worker, report: ChaosReport, within: float = 60.0) -> None:
    process = worker.process
    assert process.stdin is not None
    with contextlib.suppress(ConnectionError):
        process.stdin.close()
    lines: list[str] = []
    try:
        async with asyncio.timeout(within):
            while line := await _read_line(process, within):
                lines.append(line)
            await process.wait()
    except TimeoutError:
        report.worker_failures.append(f"{worker.name} did not stop within {within}s")
        process.kill()
        await process.wait()
        return
    try:
        summary = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        report.worker_failures.append(
            f"{worker.name} exited {process.returncode} without a summary (see its .stderr)"
        )
        return
    report.workers.append(summary)
    if process.returncode != 0:
        report.worker_failures.append(f"{worker.name} exited {process.returncode}")


async def _final_acquire(config: ChaosConfig, report: ChaosReport) -> None:
    within = config.final_within or config.publish_timeout + 2 * config.heartbeat
    settings = Settings(
        publish_timeout=config.publish_timeout, heartbeat=config.heartbeat, log_level="WARNING"
    )
    async with Bus(config.app, amqp_url=config.amqp_url, settings=settings) as bus:
        for key in config.key_names:
            started = time.monotonic()
            try:
                lease = await bus.locks.acquire(key, ttl=30, timeout=within)
            except LockAcquireError as exc:
                report.final_failures.append(f"{key}: {exc}")
                continue
            report.final_seconds[key] = time.monotonic() - started
            await lease.release()


async def run_lock_chaos(config: ChaosConfig) -> ChaosReport:
    """Run the whole scenario once (see the module's docstring)."""
    from redis.asyncio import Redis

    report = ChaosReport(config={**asdict(config), "log_dir": str(config.log_dir)})
    log_dir = config.log_dir or Path(tempfile.mkdtemp(prefix="lock-chaos-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    report.log_dir = str(log_dir)
    redis = Redis.from_url(config.redis_url)
    proxies = [FaultProxy.in_front_of(config.amqp_url) for _ in range(config.workers)]
    workers: list[_Worker] = []
    started = time.monotonic()
    try:
        for proxy in proxies:
            await proxy.start()
        for i, proxy in enumerate(proxies):
            workers.append(await _spawn(config, f"w{i}", proxy, log_dir))
        for worker in workers:
            line = await _read_line(worker.process, 60)
            if line != "ready":
                raise RuntimeError(f"{worker.name} did not start: {line!r} (see its .stderr)")
        faults_from = report.origin = time.monotonic()
        await _inject_faults(proxies, config, report)
        faults_until = time.monotonic()
        await _settle(redis, config, report)
        for worker in workers:
            await _stop(worker, report)
        await _final_acquire(config, report)
        counters = await redis.mget([f"{config.app}:holders:{k}" for k in config.key_names])
        report.holders_left = {
            k: int(v or 0) for k, v in zip(config.key_names, counters, strict=True) if int(v or 0)
        }
        intervals = read_intervals(log_dir)
        report.intervals = len(intervals)
        report.overlaps = find_overlaps(intervals)
        for overlap in report.overlaps:
            overlap.faults = _faults_near(overlap, report.fault_log)
        report.log_events = _log_events(log_dir)
        report.token_regressions = token_regressions(intervals)
        report.max_gap = max_gaps(intervals, config.key_names, faults_from, faults_until)
    finally:
        for worker in workers:
            if worker.process.returncode is None:
                worker.process.kill()
                await worker.process.wait()
        for proxy in proxies:
            await proxy.close()
        await _drop_entities(config)
        keys = [
            f"{config.app}:{kind}:{k}" for kind in ("holders", "acquired") for k in config.key_names
        ]
        await redis.delete(*keys)
        await redis.aclose()
        report.elapsed = time.monotonic() - started
    return report


async def _drop_entities(config: ChaosConfig) -> None:
    """Delete this run's exchanges and queues (best effort: lock queues expire anyway)."""
    import aio_pika

    names: dict[str, list[str]] = {}
    for kind in ("list_exchanges", "list_queues"):
        try:
            process = await asyncio.create_subprocess_exec(
                "rabbitmqctl", "-q", kind, "name", stdout=asyncio.subprocess.PIPE
            )
            out, _ = await asyncio.wait_for(process.communicate(), 60)
        except (OSError, TimeoutError):
            return
        names[kind] = [n for n in out.decode().split() if n.startswith(f"{config.app}.")]
    with contextlib.suppress(Exception):
        connection = await aio_pika.connect(config.amqp_url)
        async with connection:
            channel = await connection.channel()
            for name in names["list_exchanges"]:
                await channel.exchange_delete(name)
            for name in names["list_queues"]:
                await channel.queue_delete(name)


def _parse(argv: Sequence[str]) -> ChaosConfig:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=300.0, help="fault phase (s)")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=2, help="lock users per worker")
    parser.add_argument("--keys", type=int, default=4)
    parser.add_argument("--heartbeat", type=float, default=2.0)
    parser.add_argument("--publish-timeout", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--log-dir", type=Path, default=None)
    parser.add_argument(
        "--faults",
        default="all",
        help=f"comma-separated kinds among {','.join(FAULTS)}, 'all' or 'none'",
    )
    parser.add_argument(
        "--no-cancels", action="store_true", help="the workers never cancel their lock calls"
    )
    parser.add_argument(
        "--amqp-url", default=os.environ.get("CLUSTERBUS_TEST_AMQP_URL", DEFAULT_AMQP_URL)
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("CLUSTERBUS_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    )
    args = parser.parse_args(argv)
    config = ChaosConfig(
        seconds=args.seconds,
        workers=args.workers,
        tasks=args.tasks,
        keys=args.keys,
        heartbeat=args.heartbeat,
        publish_timeout=args.publish_timeout,
        amqp_url=args.amqp_url,
        redis_url=args.redis_url,
        log_dir=args.log_dir,
        cancels=not args.no_cancels,
    )
    if args.faults == "none":
        config.faults = {}
    elif args.faults != "all":
        kinds = args.faults.split(",")
        if unknown := set(kinds) - set(FAULTS):
            parser.error(f"unknown fault kinds: {sorted(unknown)}")
        config.faults = {kind: FAULTS[kind] for kind in kinds}
    if args.seed is not None:
        config.seed = args.seed
    return config


def main(argv: Sequence[str] | None = None) -> int:
    report = asyncio.run(run_lock_chaos(_parse(sys.argv[1:] if argv is None else argv)))
    print(json.dumps(report.summary()), flush=True)
    for problem in report.problems():
        print(problem, file=sys.stderr)
    return 1 if report.problems() else 0


if __name__ == "__main__":
    sys.exit(main())

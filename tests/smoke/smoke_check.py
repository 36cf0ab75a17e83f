"""Smoke check of an installed clusterbus wheel (run by tests/smoke/run.sh, not by pytest).

Runs inside a fresh virtual environment where only the wheel (and one extra, or none) is
installed, from a directory holding the user's own ``bus.py``, ``managers.py`` and
``plugins/``: it proves that ``clusterbus`` comes from site-packages, that those decoys still
import as the user's modules, that ``import clusterbus`` pulls in no extra, that the command
line works (``--help``, ``settings``, ``dlq list`` in memory mode), and that three memory-mode
instances on one hub do pub/sub, the event queue (dead letter included), locks, the cache and
an App's sync message through ``from clusterbus import ...`` only.

Usage: ``python smoke_check.py [--extra NAME]`` (NAME: cli, redis, sqlalchemy, postgres,
fastapi, demo). Stdlib and clusterbus only (plus the extra's own packages for its checks).
One line per check; exits 1 on the first failure, saying what failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import itertools
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

# the user's own top-level modules in the current directory (never imported by clusterbus)
DECOYS = ("bus", "managers", "plugins")
EXTRA_MODULES = {
    "": (),
    "cli": ("rich",),
    "redis": ("redis",),
    "sqlalchemy": ("sqlalchemy", "aiosqlite"),
    "postgres": ("sqlalchemy", "psycopg"),
    "fastapi": ("fastapi", "uvicorn"),
    "demo": ("sqlalchemy", "aiosqlite", "rich", "uvicorn"),
    "http": ("uvicorn",),
    "otel": ("opentelemetry",),
    "prometheus": ("opentelemetry", "prometheus_client"),
}
"""The modules each extra installs (the no-extras run checks that none is there)."""
HEAVY = ("sqlalchemy", "fastapi", "redis", "rich")
"""What ``import clusterbus`` must not import, whatever is installed."""
DEADLINE = 15.0
"""Seconds a condition may take to come true before the check fails."""
SUBPROCESS_TIMEOUT = 120.0

for _name in [n for n in os.environ if n.startswith("CLUSTERBUS_")]:
    del os.environ[_name]  # no CLUSTERBUS_AMQP_URL (or anything else) leaks into the checks

import clusterbus  # noqa: E402 - after the environment is cleaned
from clusterbus import (  # noqa: E402
    App,
    Bus,
    Cache,
    DeadLetter,
    Lease,
    MemoryHub,
    Plugin,
    QueueContext,
    Settings,
    Subscription,
    configure_logging,
)
from clusterbus.errors import (  # noqa: E402
    BusError,
    BusUnavailable,
    InvalidName,
    LockAcquireError,
    LockLost,
    LockReentryError,
    PayloadError,
)


class SmokeFailure(Exception):
    """A check failed; the message says what was expected and what happened."""


def expect(condition: bool, message: str) -> None:
    """Raise :class:`SmokeFailure` with ``message`` unless ``condition``."""
    if not condition:
        raise SmokeFailure(message)


async def eventually(what: str, predicate: Callable[[], object], timeout: float = DEADLINE) -> None:
    """Poll ``predicate`` (sync or async) until it is true; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise SmokeFailure(f"timed out after {timeout:.0f}s waiting until {what}")
        await asyncio.sleep(0.01)


class Context:
    """What the checks share: the extra under test, the temporary directory, the log file."""

    def __init__(self, extra: str, work: Path, redis_url: str) -> None:
        self.extra = extra
        self.work = work
        self.redis_url = redis_url
        self.cwd = Path.cwd().resolve()
        self.cli = Path(sys.executable).parent / "clusterbus"
        self.cli_storage = work / "cli-storage"
        self.log_file = work / "clusterbus.log"
        self.dead_id = ""
        self.part = "start"  # the part of the three-instance round trip under way

    def settings(self, storage: str, **overrides: Any) -> Settings:
        """Memory-mode settings with fast retries and sync debounce, storing under ``work``."""
        values: dict[str, Any] = {
            "mode": "memory",
            "storage_dir": self.work / storage,
            "retry_delay": 0.05,
            "retry_delay_max": 0.2,
            "sync_debounce": 0.05,
            "stop_timeout": 5.0,
        }
        values.update(overrides)
        return Settings(**values)

    def env(self) -> dict[str, str]:
        """The environment of a ``clusterbus`` command: memory mode, storage in a temp dir."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERBUS_")}
        env.update(CLUSTERBUS_STORAGE_DIR=str(self.cli_storage), COLUMNS="200", NO_COLOR="1")
        return env

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the current directory with :meth:`env`."""
        return subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT,
            env=self.env(),
            cwd=self.cwd,
            check=False,
        )

    def command(self, *argv: str, code: int = 0) -> str:
        """Run the ``clusterbus`` console script; its standard output (fails unless it
        exits with ``code``)."""
        return self.expect_exit(self.run(str(self.cli), *argv), "clusterbus", argv, code)

    @staticmethod
    def expect_exit(
        proc: subprocess.CompletedProcess[str], name: str, argv: tuple[str, ...], code: int = 0
    ) -> str:
        """``proc``'s standard output, failing with both outputs unless it exited ``code``."""
        shown = " ".join((name, *argv))
        expect(
            proc.returncode == code,
            f"`{shown}` exited {proc.returncode} (expected {code})\n"
            f"--- stdout\n{proc.stdout.rstrip()}\n--- stderr\n{proc.stderr.rstrip()}",
        )
        return proc.stdout


# --- where things come from -------------------------------------------------------------


def check_installed(ctx: Context) -> str:
    """clusterbus comes from this virtual environment's site-packages, not a repository."""
    expect(sys.prefix != sys.base_prefix, f"not running in a virtual environment ({sys.prefix})")
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    where = Path(clusterbus.__file__ or "?").resolve()
    expect(
        where.is_relative_to(site),
        f"clusterbus imported from {where}, not from this venv's site-packages {site}",
    )
    for sub in ("bus", "managers", "plugins"):
        module = importlib.import_module(f"clusterbus.{sub}")
        path = Path(module.__file__ or "?").resolve()
        expect(path.is_relative_to(site / "clusterbus"), f"clusterbus.{sub} is at {path}")
    expect(ctx.cli.exists(), f"no console script {ctx.cli}")
    return f"{where.parent} (version {clusterbus.__version__})"


def check_decoys(ctx: Context) -> str:
    """The user's own bus, managers and plugins import from the current directory."""
    for name in DECOYS:
        expect(
            name not in sys.modules,
            f"importing clusterbus imported a top-level {name!r} ({sys.modules.get(name)!r})",
        )
    found = []
    for name in DECOYS:
        module = importlib.import_module(name)
        path = Path(module.__file__ or "?").resolve()
        expect(
            path.is_relative_to(ctx.cwd),
            f"`import {name}` found {path}, not the user's own in {ctx.cwd}",
        )
        expect(
            getattr(module, "WHO", None) == f"user's {name}",
            f"{path} is not the decoy (WHO = {getattr(module, 'WHO', None)!r})",
        )
        found.append(path.relative_to(ctx.cwd).as_posix())
    return ", ".join(found)


def check_import_is_light(ctx: Context) -> str:
    """A fresh ``import clusterbus`` imports no extra and no top-level decoy.

    Only what clusterbus itself adds counts: structlog imports rich whenever rich is
    installed (for its dev console renderer), so the runtime dependencies are imported
    first, in the same fresh interpreter, and what they pulled in is reported apart."""
    watched = HEAVY + DECOYS
    code = (
        "import sys\n"
        f"watched = {watched!r}\n"
        "import aio_pika, msgpack, pydantic, pydantic_settings, structlog\n"
        "print(' '.join(m for m in watched if m in sys.modules))\n"
        "before = set(sys.modules)\n"
        "import clusterbus, clusterbus.errors\n"
        "print(' '.join(m for m in watched if m in sys.modules and m not in before))\n"
    )
    proc = ctx.run(sys.executable, "-c", code)
    out = ctx.expect_exit(proc, "python", ("-c", "import clusterbus")).splitlines()
    expect(len(out) == 2, f"unexpected output {out!r}")
    by_dependencies, added = out[0].split(), out[1].split()
    expect(not added, f"`import clusterbus` imported {', '.join(added)}")
    detail = f"clusterbus added none of {', '.join(watched)}"
    if by_dependencies:
        detail += f" (its dependencies imported {', '.join(by_dependencies)})"
    return detail


def check_public_api(_ctx: Context) -> str:
    """Every public name is there, and the errors derive from BusError."""
    names: tuple[type, ...] = (App, Bus, Cache, DeadLetter, Lease, MemoryHub, Plugin)
    names += (QueueContext, Settings, Subscription)
    expect(callable(configure_logging), "configure_logging is not callable")
    errors = (BusUnavailable, InvalidName, LockAcquireError, LockLost, LockReentryError)
    for error in (*errors, PayloadError):
        expect(issubclass(error, BusError), f"{error.__name__} does not derive from BusError")
    expect(issubclass(InvalidName, ValueError), "InvalidName is not a ValueError")
    expect(clusterbus.errors.BusError is BusError, "clusterbus.errors.BusError differs")
    return f"{len(names) + 1} names, {len(errors) + 2} errors"


def check_extra_installed(ctx: Context) -> str:
    """The extra's packages are installed; with no extra, none of any extra is."""
    wanted = EXTRA_MODULES[ctx.extra]
    missing = [m for m in wanted if importlib.util.find_spec(m) is None]
    expect(not missing, f"extra {ctx.extra!r} did not install {', '.join(missing)}")
    if not ctx.extra:
        every = sorted({m for modules in EXTRA_MODULES.values() for m in modules})
        present = [m for m in every if importlib.util.find_spec(m) is not None]
        expect(not present, f"no extra was asked for, yet {', '.join(present)} is installed")
        return f"none of {', '.join(every)}"
    return ", ".join(wanted)


# --- three instances in memory mode -----------------------------------------------------


def recorder(sink: list[Any]) -> Callable[[Any], Awaitable[None]]:
    """A pub/sub handler appending each message to ``sink``."""

    async def handler(message: Any) -> None:
        sink.append(message)

    return handler


async def check_pubsub(buses: list[Bus]) -> str:
    """A publish on A reaches B and C, not A (skip_self by default)."""
    a, b, c = buses
    received: list[list[Any]] = [[], [], []]
    for bus, sink in zip(buses, received, strict=True):
        await bus.pubsub.subscribe("smoke.news", recorder(sink))
    await a.pubsub.publish("smoke.news", {"n": 1, "from": "a"})
    await eventually("b and c got a's message", lambda: received[1] and received[2])
    expect(received[1] == received[2] == [{"n": 1, "from": "a"}], f"got {received[1:]}")
    # a's own message would have reached a before b's marker does: none did
    await b.pubsub.publish("smoke.news", {"marker": "b"})
    await eventually("a got b's marker", lambda: received[0])
    expect(received[0] == [{"marker": "b"}], f"a (the sender) received {received[0]}")
    expect(c.instance_id not in (a.instance_id, b.instance_id), "instance ids collide")
    return "A -> B, C; skip_self kept A out"


async def check_queue(buses: list[Bus]) -> str:
    """Competing consumers take each message once; a failing one ends in the dead queue."""
    taken: dict[str, list[int]] = {}
    attempts: list[int] = []

    def worker(index: int) -> Callable[[Any, QueueContext], Awaitable[None]]:
        async def process(message: Any, ctx: QueueContext) -> None:
            if message.get("fail"):
                attempts.append(ctx.attempt)
                raise RuntimeError(f"smoke failure of job {message['n']}")
            taken.setdefault(ctx.id, []).append(index)

        return process

    for index, bus in enumerate(buses):
        await bus.queue.subscribe("smoke.jobs", worker(index))
    a = buses[0]
    ids = [await a.queue.publish("smoke.jobs", {"n": n}) for n in range(12)]
    expect(len(set(ids)) == len(ids), f"publish returned repeated ids {ids}")
    await eventually("the 12 jobs were processed", lambda: set(taken) >= set(ids))
    twice = {i: who for i, who in taken.items() if len(who) != 1}
    expect(not twice, f"jobs processed more than once: {twice}")
    expect(set(taken) == set(ids), f"processed ids not published: {set(taken) - set(ids)}")
    workers = sorted({who[0] for who in taken.values()})

    failing = await buses[1].queue.publish("smoke.jobs", {"n": 99, "fail": True}, max_retries=1)
    letters: list[DeadLetter] = []

    async def dead() -> bool:
        letters[:] = await a.queue.dead_letters("smoke.jobs")
        return any(letter.id == failing for letter in letters)

    await eventually("the failing job was dead-lettered", dead)
    (letter,) = [letter for letter in letters if letter.id == failing]
    expect("smoke failure of job 99" in letter.error, f"dead letter error is {letter.error!r}")
    expect(letter.attempts == 2, f"dead letter made {letter.attempts} attempts, not 2")
    expect(letter.message == {"n": 99, "fail": True}, f"dead letter holds {letter.message!r}")
    expect(sorted(attempts) == [0, 1], f"attempts seen by process: {attempts}")
    expect(await a.queue.purge_dead("smoke.jobs") == 1, "purge_dead did not remove 1 letter")
    return f"12 jobs once each (on instances {workers}); dead letter after 2 attempts"


async def check_locks(buses: list[Bus]) -> str:
    """Two instances contend for one key: never both inside, tokens strictly increase."""
    holders: list[str] = []
    tokens: list[int] = []
    inside: list[str] = []
    rounds = 10

    async def contend(bus: Bus, label: str) -> None:
        for _ in range(rounds):
            async with bus.locks.lock("smoke-key", ttl=10.0, timeout=DEADLINE) as lease:
                expect(not inside, f"{label} entered while {inside} held the lock")
                inside.append(label)
                holders.append(label)
                tokens.append(lease.token)
                await asyncio.sleep(0.002)  # give the other instance a chance to (wrongly) enter
                inside.remove(label)

    await asyncio.gather(contend(buses[0], "A"), contend(buses[1], "B"))
    expect(len(tokens) == 2 * rounds, f"{len(tokens)} acquisitions, not {2 * rounds}")
    expect(
        all(later > earlier for earlier, later in itertools.pairwise(tokens)),
        f"tokens did not strictly increase: {tokens}",
    )
    expect(set(holders) == {"A", "B"}, f"only {set(holders)} ever held the lock")

    lease = await buses[0].locks.acquire("smoke-key", ttl=10.0)
    try:
        with contextlib.suppress(LockAcquireError):
            await buses[2].locks.try_acquire("smoke-key")
            raise SmokeFailure("C's try_acquire got a lock A holds")
    finally:
        await lease.release()
    other = await buses[2].locks.try_acquire("smoke-key")
    expect(other.token > tokens[-1], f"token {other.token} after {tokens[-1]}")
    await other.release()
    return f"{len(tokens)} turns A/B, never both; try_acquire on a held key refused"


async def check_cache(buses: list[Bus]) -> str:
    """A write on A invalidates B's memory cache, so B's wrap computes again."""
    a_bus, b_bus, _ = buses
    a = await a_bus.cache_manager.create_cache("smoke", prefix="smoke", store="memory")
    b = await b_bus.cache_manager.create_cache("smoke", prefix="smoke", store="memory")
    calls: list[int] = []

    async def compute() -> str:
        calls.append(1)
        return f"computed {len(calls)}"

    expect(await b.wrap("k", compute) == "computed 1", "b's first wrap did not compute")
    expect(await b.wrap("k", compute) == "computed 1", "b's second wrap was not a hit")
    expect(len(calls) == 1, f"fn ran {len(calls)} times for one miss")
    await a.set("k", "from a")
    expect(await a.get("k") == "from a", "a does not read its own write")

    async def dropped() -> bool:
        return await b.get("k") is None

    await eventually("b dropped its cached value after a's write", dropped)
    expect(await b.wrap("k", compute) == "computed 2", "b's wrap did not recompute")
    expect(len(calls) == 2, f"fn ran {len(calls)} times, not 2")
    return "set on A invalidated B; B's wrap recomputed"


class Greeter(Plugin):
    """Records the lifecycle hooks and the sync messages it receives."""

    name = "greeter"

    def __init__(self, app: App, **options: Any) -> None:
        super().__init__(app, **options)
        self.hooks: list[str] = []
        self.received: list[Any] = []

    async def load(self) -> None:
        self.hooks.append("load")

    async def after_start(self) -> None:
        self.hooks.append("after_start")

    async def handle_sync_message(self, message: Any) -> None:
        self.received.append(message)


async def check_app_sync(ctx: Context) -> str:
    """A plugin's sync message from one App instance reaches the other, not itself."""
    hub = MemoryHub()
    apps = [App("smoke-app", hub=hub, settings=ctx.settings("apps")) for _ in range(2)]
    plugins = [app.add(Greeter, greeting="hi") for app in apps]
    try:
        for app in apps:
            await app.start()
        expect(plugins[0].hooks == ["load", "after_start"], f"hooks ran: {plugins[0].hooks}")
        expect(plugins[0].options == {"greeting": "hi"}, f"options: {plugins[0].options}")
        ok = await plugins[0].send_sync_message({"hello": "from 0"})
        expect(ok is True, f"send_sync_message returned {ok!r}")
        await eventually("the other instance got the sync message", lambda: plugins[1].received)
        expect(plugins[1].received == [{"hello": "from 0"}], f"got {plugins[1].received}")
        expect(plugins[0].received == [], f"the sender got its own: {plugins[0].received}")
    finally:
        for app in apps:
            await app.stop()
    return "plugin on app 1 -> app 2"


async def three_instances(ctx: Context) -> list[tuple[str, str, float]]:
    """Run the round trip on three buses of one hub; (check, detail, seconds) per part."""
    hub = MemoryHub()
    buses = [Bus("smoke", hub=hub, settings=ctx.settings("round-trip")) for _ in range(3)]
    results = []
    async with contextlib.AsyncExitStack() as stack:
        for bus in buses:
            await bus.start()
            stack.push_async_callback(bus.stop)
            expect(bus.mode == "memory", f"bus mode is {bus.mode!r}")
        for name, part in (
            ("pub/sub", check_pubsub),
            ("queue", check_queue),
            ("locks", check_locks),
            ("cache", check_cache),
        ):
            ctx.part = name
            started = time.monotonic()
            detail = await timed(name, part(buses))
            results.append((name, detail, time.monotonic() - started))
    return results


async def timed(name: str, work: Awaitable[str]) -> str:
    """``work``'s result, failing when it takes more than a minute."""
    try:
        async with asyncio.timeout(60):
            return await work
    except TimeoutError:
        raise SmokeFailure(f"{name} did not finish within 60 s") from None


# --- command line -------------------------------------------------------------------------


async def make_dead_letter(ctx: Context) -> str:
    """A dead letter of app smoke-dlq, channel jobs, saved in the CLI's storage directory."""
    bus = Bus("smoke-dlq", settings=ctx.settings(ctx.cli_storage.name))

    async def process(message: Any, _ctx: QueueContext) -> None:
        raise ValueError(f"smoke dead letter {message['n']}")

    await bus.start()
    try:
        await bus.queue.subscribe("jobs", process)
        ctx.dead_id = await bus.queue.publish("jobs", {"n": 7}, max_retries=0)

        async def dead() -> bool:
            return [x.id for x in await bus.queue.dead_letters("jobs")] == [ctx.dead_id]

        await eventually("the job was dead-lettered", dead)
    finally:
        await bus.stop()  # the last bus of the app on the hub: saves to the storage dir
    saved = sorted(p.name for p in ctx.cli_storage.iterdir()) if ctx.cli_storage.exists() else []
    expect(bool(saved), f"stop() saved nothing in {ctx.cli_storage}")
    return f"id {ctx.dead_id}, saved as {', '.join(saved)}"


def check_help(ctx: Context) -> str:
    """``clusterbus --help`` and ``python -m clusterbus --help`` (beside the decoys)."""
    out = ctx.command("--help")
    for command in ("settings", "dlq", "demo", "node"):
        expect(command in out, f"`clusterbus --help` does not list {command!r}:\n{out}")
    proc = ctx.run(sys.executable, "-m", "clusterbus", "--help")
    module_out = ctx.expect_exit(proc, "python", ("-m", "clusterbus", "--help"))
    expect("dlq" in module_out, f"`python -m clusterbus --help` printed:\n{module_out}")
    return "console script and python -m"


def check_settings(ctx: Context) -> str:
    """``clusterbus settings`` shows the environment's storage dir and no AMQP URL."""
    out = ctx.command("settings")
    for line in (f"storage_dir = {ctx.cli_storage}", "amqp_url = None"):
        expect(line in out.splitlines(), f"`clusterbus settings` lacks {line!r}:\n{out}")
    return f"{len(out.splitlines())} settings"


def check_doctor(ctx: Context) -> str:
    """``clusterbus doctor --json`` in memory mode: exit 0, the broker rows skipped."""
    out = ctx.command("doctor", "--json")
    document = json.loads(out)
    expect(document["ok"] is True, f"`clusterbus doctor` found a problem:\n{out}")
    return f"{len(document['checks'])} checks"


def check_prometheus(ctx: Context) -> str:
    """``enable_prometheus()`` and ``metrics_app()``: a Bus's metrics in Prometheus text."""
    from clusterbus.prometheus import enable_prometheus, metrics_app

    enable_prometheus()

    async def scrape() -> str:
        async with Bus("smoke-prom", hub=MemoryHub(), settings=ctx.settings("prom")) as bus:
            await bus.pubsub.publish("ticks", 1)
        sent: list[MutableMapping[str, Any]] = []

        async def receive() -> MutableMapping[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}
        await metrics_app()(scope, receive, send)
        return b"".join(m.get("body", b"") for m in sent).decode()

    text = asyncio.run(scrape())
    expect("messaging_client_sent_messages" in text, f"no publish counter in:\n{text[:2000]}")
    return "messaging_client_sent_messages exposed"


def check_dlq_list(ctx: Context) -> str:
    """``clusterbus dlq list jobs --app smoke-dlq`` shows the saved dead letter."""
    out = ctx.command("dlq", "list", "jobs", "--app", "smoke-dlq")
    expect(ctx.dead_id in out, f"`clusterbus dlq list` does not show {ctx.dead_id}:\n{out}")
    expect("smoke dead letter 7" in out, f"`clusterbus dlq list` lacks the error:\n{out}")
    return f"lists {ctx.dead_id}"


# --- extras -------------------------------------------------------------------------------


async def check_redis(ctx: Context) -> str:
    """Two buses with cache_store='redis' share values through Redis."""
    import redis.asyncio

    hub = MemoryHub()
    settings = ctx.settings("redis", cache_store="redis", redis_url=ctx.redis_url)
    a, b = (Bus("smoke-redis", hub=hub, settings=settings) for _ in range(2))
    key = f"k-{uuid.uuid4().hex}"
    client = redis.asyncio.from_url(ctx.redis_url)
    try:
        try:
            await client.ping()
        except (OSError, redis.exceptions.ConnectionError) as exc:
            raise SmokeFailure(
                f"Redis does not answer at {ctx.redis_url} ({exc}); `make services` starts it"
            ) from None
        await a.start()
        await b.start()
        expect(a.cache.store.shared, f"bus.cache's store is {type(a.cache.store).__name__}")
        await a.cache.set(key, {"v": 1})
        expect(await b.cache.get(key) == {"v": 1}, "b does not read a's value from redis")
        expect(await client.exists(a.cache.full_key(key)) == 1, "the key is not in redis")
        await b.cache.delete(key)
        expect(await a.cache.get(key) is None, "a still reads a deleted key")
    finally:
        await a.stop()
        await b.stop()
        await client.aclose()
    return f"set on A, get on B, through {ctx.redis_url}"


async def check_sqlalchemy(ctx: Context) -> str:
    """send_sync_message in an AsyncSession: sent on commit, dropped on rollback."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    hub = MemoryHub()
    apps = [App("smoke-sql", hub=hub, settings=ctx.settings("sql")) for _ in range(2)]
    sender, receiver = (app.add(Greeter) for app in apps)
    engine = create_async_engine("sqlite+aiosqlite:///:memory:")
    try:
        for app in apps:
            await app.start()
        async with AsyncSession(engine) as session:
            await session.execute(text("select 1"))
            expect(await sender.send_sync_message("rolled back", transaction=session), "sent")
            await session.rollback()
        async with AsyncSession(engine) as session:
            await session.execute(text("select 1"))
            expect(await sender.send_sync_message("committed", transaction=session), "sent")
            expect(receiver.received == [], f"received before commit: {receiver.received}")
            await session.commit()
        await eventually("the committed message arrived", lambda: receiver.received)
        expect(receiver.received == ["committed"], f"received {receiver.received}")
    finally:
        for app in apps:
            await app.stop()
        await engine.dispose()
    return "sqlite+aiosqlite in memory: commit sent, rollback dropped"


def check_postgres(_ctx: Context) -> str:
    """psycopg (binary) and SQLAlchemy's async extension import."""
    import psycopg
    import sqlalchemy.ext.asyncio

    expect(sqlalchemy.ext.asyncio.AsyncSession is not None, "no AsyncSession")
    return f"psycopg {psycopg.__version__} ({psycopg.pq.__impl__} libpq)"


def check_fastapi(_ctx: Context) -> str:
    """FastAPI imports."""
    import fastapi

    return f"fastapi {fastapi.__version__}"


def check_cli_rich(ctx: Context) -> str:
    """With rich installed, ``dlq list`` still lists the dead letter, in a table."""
    import rich

    out = ctx.command("dlq", "list", "jobs", "--app", "smoke-dlq")
    expect(ctx.dead_id in out, f"`clusterbus dlq list` does not show {ctx.dead_id}:\n{out}")
    expect("dead letters of 'jobs' (1)" in out, f"no table title in:\n{out}")
    return f"rich {importlib.metadata.version(rich.__name__)}"


def check_demo_help(ctx: Context) -> str:
    """``clusterbus demo --help`` exits 0."""
    out = ctx.command("demo", "--help")
    expect("--amqp-url" in out, f"`clusterbus demo --help` printed:\n{out}")
    return "exit 0"


# --- driver -------------------------------------------------------------------------------


def report(name: str, detail: str, started: float, seconds: float | None = None) -> None:
    """Print one check's line (it took ``seconds``, or the time since ``started``)."""
    took = time.monotonic() - started if seconds is None else seconds
    print(f"ok    {name:<22} {took:6.2f}s  {detail}", flush=True)


def fail(ctx: Context, name: str, exc: BaseException) -> int:
    """Print why ``name`` failed (and the end of the library's log); the exit status."""
    kind = "" if isinstance(exc, SmokeFailure) else f"{type(exc).__name__}: "
    print(f"FAIL  {name}: {kind}{exc}", file=sys.stderr, flush=True)
    if not isinstance(exc, SmokeFailure):
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    if ctx.log_file.exists():
        tail = ctx.log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-20:]
        if tail:
            print("--- last clusterbus log lines", *tail, sep="\n", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run every check for ``--extra``; 0 when all pass, 1 at the first failure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--extra", default="", choices=sorted(EXTRA_MODULES))
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    print(f"smoke check of the clusterbus wheel, extra: {args.extra or '(none)'}", flush=True)

    with tempfile.TemporaryDirectory(prefix="clusterbus-smoke-") as tmp:
        ctx = Context(args.extra, Path(tmp), args.redis_url)
        with ctx.log_file.open("a", encoding="utf-8") as log:
            configure_logging(format="json", level="WARNING", file=log)
            return run_checks(ctx)


def run_checks(ctx: Context) -> int:
    """The checks in order; stops at the first failure."""
    sync_checks: list[tuple[str, Callable[[Context], str]]] = [
        ("installed wheel", check_installed),
        ("user's own modules", check_decoys),
        ("import is light", check_import_is_light),
        ("public API", check_public_api),
        ("extra installed", check_extra_installed),
    ]
    for name, check in sync_checks:
        started = time.monotonic()
        try:
            report(name, check(ctx), started)
        except Exception as exc:
            return fail(ctx, name, exc)

    try:
        for name, detail, seconds in asyncio.run(three_instances(ctx)):
            report(name, detail, 0.0, seconds)
    except Exception as exc:
        return fail(ctx, f"three instances: {ctx.part}", exc)

    async_checks: list[tuple[str, Callable[[Context], Awaitable[str]]]] = [
        ("app sync message", check_app_sync),
        ("dead letter for cli", make_dead_letter),
    ]
    if ctx.extra == "redis":
        async_checks.append(("redis cache", check_redis))
    if ctx.extra == "sqlalchemy":
        async_checks.append(("sqlalchemy transaction", check_sqlalchemy))
    for name, async_check in async_checks:
        started = time.monotonic()
        try:
            report(name, asyncio.run(timed(name, async_check(ctx))), started)
        except Exception as exc:
            return fail(ctx, name, exc)

    cli_checks: list[tuple[str, Callable[[Context], str]]] = [
        ("clusterbus --help", check_help),
        ("clusterbus settings", check_settings),
        ("clusterbus dlq list", check_dlq_list),
        ("clusterbus doctor", check_doctor),
    ]
    extra_checks: dict[str, list[tuple[str, Callable[[Context], str]]]] = {
        "cli": [("dlq list with rich", check_cli_rich)],
        "postgres": [("psycopg", check_postgres)],
        "fastapi": [("fastapi", check_fastapi)],
        "demo": [("clusterbus demo --help", check_demo_help)],
        "prometheus": [("prometheus", check_prometheus)],
    }
    for name, check in cli_checks + extra_checks.get(ctx.extra, []):
        started = time.monotonic()
        try:
            report(name, check(ctx), started)
        except Exception as exc:
            return fail(ctx, name, exc)
    print(f"smoke check passed (extra: {ctx.extra or '(none)'})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

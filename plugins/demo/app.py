"""``clusterbus demo``: three instances of one app running the example plugins, driven
through a scenario whose every step is checked; non-zero exit when one did not behave.

In memory mode the three instances live in this process on one hub; with ``--amqp-url``
they are three ``clusterbus node --control`` processes on RabbitMQ. Either way the driver
talks to them only through the bus (the ``demo-control`` plugin, which the nodes host only
when asked for), and they share one SQLite file.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bus import Bus, BusError, MemoryHub, Settings
from plugins.app import App
from plugins.demo import APP_NAME
from plugins.demo.node import CONTROL, REPLY, build_node
from plugins.examples.db import Database

LABELS = ("node-a", "node-b", "node-c")
CALL_TIMEOUT = 15.0


class StepFailed(Exception):
    """A demo step did not behave as the product promises."""


class Remote:
    """The driver's end of the control channel: requests out, replies matched by id."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._waiting: dict[str, asyncio.Future[Any]] = {}

    async def start(self) -> None:
        await self.bus.pubsub.subscribe(REPLY, self._on_reply)

    async def _on_reply(self, reply: dict[str, Any]) -> None:
        waiter = self._waiting.pop(str(reply.get("id")), None)
        if waiter is None or waiter.done():
            return
        if reply.get("ok"):
            waiter.set_result(reply.get("result"))
        else:
            waiter.set_exception(StepFailed(f"{reply.get('node')}: {reply.get('error')}"))

    async def call(self, node: str, op: str, **args: Any) -> Any:
        """Ask ``node`` to run ``op(**args)``; its result."""
        request_id = uuid.uuid4().hex
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = waiter
        request = {"id": request_id, "node": node, "op": op, "args": args}
        await self.bus.pubsub.publish(CONTROL, request)
        try:
            return await asyncio.wait_for(waiter, CALL_TIMEOUT)
        except TimeoutError:
            raise StepFailed(f"{node} did not answer {op!r} within {CALL_TIMEOUT}s") from None
        finally:
            self._waiting.pop(request_id, None)

    async def statuses(self) -> dict[str, dict[str, Any]]:
        """Every node's status, by label."""
        found = await asyncio.gather(*(self.call(label, "status") for label in LABELS))
        return {status["label"]: status for status in found}

    async def until(
        self, check: Callable[[dict[str, dict[str, Any]]], bool], what: str, within: float = 15
    ) -> dict[str, dict[str, Any]]:
        """Poll the nodes' statuses until ``check`` holds."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            statuses = await self.statuses()
            if check(statuses):
                return statuses
            if asyncio.get_running_loop().time() > deadline:
                raise StepFailed(f"not within {within}s: {what}")
            await asyncio.sleep(0.1)


class Scenario:
    """The steps, in order; each prints one line of the narrative."""

    def __init__(self, console: Console, remote: Remote) -> None:
        self.console = console
        self.remote = remote
        self.failures: list[str] = []

    async def step(self, title: str, run: Callable[[], Awaitable[str]]) -> None:
        try:
            detail = await run()
        except (StepFailed, BusError) as exc:
            self.failures.append(title)
            self.console.print(f"[red]✗[/red] {title}: [red]{exc}[/red]")
        else:
            self.console.print(f"[green]✓[/green] {title}: {detail}")

    async def run(self) -> list[str]:
        await self.step("three instances answer", self.ready)
        await self.step("a schema change reaches the others after commit", self.schema_change)
        await self.step("a rolled-back change sends nothing", self.rolled_back)
        await self.step("tasks spread over the instances", self.tasks_spread)
        await self.step("a cancel reaches the instance running the task", self.cancel)
        await self.step("field removals are serialised by the lock", self.removals)
        await self.step("the auth cache is hit", self.auth_cache)
        return self.failures

    async def ready(self) -> str:
        statuses = await self.remote.until(lambda s: len(s) == 3, "three nodes answer")
        return ", ".join(f"{label} = {s['instance']}" for label, s in statuses.items())

    async def schema_change(self) -> str:
        if not await self.remote.call("node-a", "add_field", collection="posts", field="title"):
            raise StepFailed("node-a could not add posts.title")
        statuses = await self.remote.until(
            lambda s: all("title" in s[n]["collections"].get("posts", []) for n in LABELS[1:]),
            "node-b and node-c see posts.title",
        )
        if "posts" in statuses["node-a"]["reloads"]:
            raise StepFailed("node-a received its own sync message")
        return "node-a added posts.title; node-b and node-c reloaded posts from the database"

    async def rolled_back(self) -> str:
        added = await self.remote.call(
            "node-a", "add_field", collection="comments", field="draft", fail=True
        )
        if added:
            raise StepFailed("the failing transaction reported success")
        await self.remote.call("node-a", "add_field", collection="tags", field="label")
        statuses = await self.remote.until(
            lambda s: all("tags" in s[n]["reloads"] for n in LABELS[1:]),
            "a later change arrives",
        )
        for label, status in statuses.items():
            if "comments" in status["reloads"] or "comments" in status["collections"]:
                raise StepFailed(f"{label} saw the rolled-back change to comments")
        return "comments.draft rolled back: nobody reloaded; tags.label, sent after, arrived"

    async def tasks_spread(self) -> str:
        ids = [await self.remote.call("node-a", "submit", kind="sleep", seconds=0.3)]
        for _ in range(5):
            ids.append(await self.remote.call("node-a", "submit", kind="sleep", seconds=0.3))
        statuses = await self.remote.until(
            lambda s: set(ids) <= {i for n in s.values() for i in n["done"]}, "all 6 tasks done"
        )
        runs = [i for n in statuses.values() for i in n["started"] if i in ids]
        if sorted(runs) != sorted(ids):
            raise StepFailed(f"tasks did not run exactly once each: {runs}")
        spread = {label: sum(i in ids for i in s["started"]) for label, s in statuses.items()}
        if sum(1 for count in spread.values() if count) < 2:
            raise StepFailed(f"all tasks ran on one instance: {spread}")
        return "6 tasks submitted on node-a ran " + ", ".join(
            f"{count} on {label}" for label, count in spread.items()
        )

    async def cancel(self) -> str:
        task_id = await self.remote.call("node-a", "submit", kind="sleep", seconds=30)
        statuses = await self.remote.until(
            lambda s: any(task_id in n["running"] for n in s.values()), "the long task starts"
        )
        runner = next(label for label, s in statuses.items() if task_id in s["running"])
        await self.remote.call("node-b", "cancel", task_id=task_id)
        statuses = await self.remote.until(
            lambda s: task_id in s[runner]["cancelled"], f"{runner} cancels the task"
        )
        if any(task_id in s["done"] for s in statuses.values()):
            raise StepFailed("the cancelled task was reported done")
        return f"node-b cancelled a 30 s task; {runner}, which ran it, stopped it"

    async def removals(self) -> str:
        first, second = await asyncio.gather(
            self.remote.call("node-a", "remove_field", collection="posts", field="title"),
            self.remote.call("node-b", "remove_field", collection="posts", field="body"),
        )
        if not (first or second):
            raise StepFailed("neither removal happened")
        statuses = await self.remote.statuses()
        sections = sorted(
            (enter, leave, label)
            for label, status in statuses.items()
            for enter, leave in _sections(status["lock_log"])
        )
        for (_, leave, one), (enter, _, other) in itertools.pairwise(sections):
            if enter < leave:
                raise StepFailed(f"{one} and {other} were inside the lock at the same time")
        if len(sections) < 2:
            raise StepFailed(f"expected two lock sections, saw {len(sections)}")
        key = "data-source:fields.before_destroy:posts"
        return f"{len(sections)} sections under {key!r}, none overlapping"

    async def auth_cache(self) -> str:
        for _ in range(3):
            await self.remote.call("node-c", "token_policy")
        reads = (await self.remote.call("node-c", "status"))["auth_db_reads"]
        if reads != 1:
            raise StepFailed(f"node-c read the token policy from the database {reads} times")
        return "3 token-policy reads on node-c, 1 from the database, 2 from the cache"


def _sections(lock_log: list[list[Any]]) -> list[tuple[float, float]]:
    """(enter, exit) times of a node's lock sections."""
    sections, entered = [], None
    for _instance, what, at in lock_log:
        if what == "enter":
            entered = float(at)
        elif entered is not None:
            sections.append((entered, float(at)))
            entered = None
    return sections


def final_table(statuses: dict[str, dict[str, Any]]) -> Table:
    """What each instance saw."""
    table = Table(title="what each instance saw")
    for column in (
        "node",
        "instance",
        "sync reloads",
        "tasks run",
        "cancelled",
        "lock sections",
        "auth db reads",
    ):
        table.add_column(column)
    for label, s in sorted(statuses.items()):
        table.add_row(
            label,
            s["instance"],
            ", ".join(s["reloads"]) or "-",
            str(len(s["done"])),
            str(len(s["cancelled"])),
            str(len(_sections(s["lock_log"]))),
            str(s["auth_db_reads"]),
        )
    return table


async def run_demo(
    console: Console, amqp_url: str | None, settings: Settings, log_file: str | None = None
) -> int:
    """Start the cluster, run the scenario, print the table; the exit status."""
    demo_settings = Settings.model_validate(
        {**settings.model_dump(), "sync_debounce": 0.2, "retry_delay": 0.2}
    )
    mode = "memory, one process"
    if amqp_url:
        mode = f"RabbitMQ at {Settings(amqp_url=amqp_url).amqp_url_redacted()}, three processes"
    console.print(f"[bold]clusterbus demo[/bold]: three instances of one app ({mode})")
    started = time.monotonic()
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="clusterbus-demo-") as directory:
        database_url = f"sqlite+aiosqlite:///{Path(directory) / 'demo.db'}"
        database = Database(database_url)
        await database.create_all()
        app_name = f"{APP_NAME}-{uuid.uuid4().hex[:6]}"
        here = Settings.model_validate({**demo_settings.model_dump(), "storage_dir": directory})
        cluster: MemoryCluster | ProcessCluster = (
            ProcessCluster(app_name, amqp_url, database_url, here, log_file)
            if amqp_url
            else MemoryCluster(app_name, database, here)
        )
        try:
            await cluster.start()
            async with cluster.driver() as bus:
                remote = Remote(bus)
                await remote.start()
                failures = await Scenario(console, remote).run()
                with contextlib.suppress(StepFailed, BusError):
                    console.print(final_table(await remote.statuses()))
        except StepFailed as exc:
            failures.append(str(exc))
            console.print(f"[red]✗ {exc}[/red]")
        finally:
            await cluster.stop()
            await database.dispose()
    took = time.monotonic() - started
    if failures:
        console.print(f"[red]{len(failures)} step(s) did not behave[/red] ({took:.1f} s)")
        return 1
    console.print(f"[green]every step behaved[/green] ({took:.1f} s)")
    return 0


class MemoryCluster:
    """Three nodes in this process on one memory hub."""

    def __init__(self, app_name: str, database: Database, settings: Settings) -> None:
        self.hub = MemoryHub()
        self.settings = settings
        self.app_name = app_name
        self.nodes: list[App] = [
            build_node(
                label, database, app_name=app_name, hub=self.hub, settings=settings, control=True
            )
            for label in LABELS
        ]

    async def start(self) -> None:
        for node in self.nodes:
            await node.start()

    def driver(self) -> Bus:
        return Bus(self.app_name, hub=self.hub, settings=self.settings)

    async def stop(self) -> None:
        for node in self.nodes:
            await node.stop()


class ProcessCluster:
    """Three ``clusterbus node`` processes on RabbitMQ."""

    def __init__(
        self,
        app_name: str,
        amqp_url: str,
        database_url: str,
        settings: Settings,
        log_file: str | None,
    ) -> None:
        self.log_file = log_file
        self.app_name = app_name
        self.amqp_url = amqp_url
        self.database_url = database_url
        self.settings = settings
        self.processes: list[asyncio.subprocess.Process] = []

    async def start(self) -> None:
        for label in LABELS:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "clusterbus",
                "node",
                "--label",
                label,
                "--app",
                self.app_name,
                "--amqp-url",
                self.amqp_url,
                "--database-url",
                self.database_url,
                "--control",  # the driver talks to the nodes through their control channel
                *(["--log-file", self.log_file] if self.log_file else []),
                stdout=asyncio.subprocess.PIPE,
                env={**os.environ, "CLUSTERBUS_LOG_LEVEL": "DEBUG"},
            )
            self.processes.append(process)
        for process in self.processes:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), 30)
            if not line.startswith(b"ready"):
                raise StepFailed(f"a node did not start (exit {process.returncode})")

    def driver(self) -> Bus:
        return Bus(self.app_name, amqp_url=self.amqp_url, settings=self.settings)

    async def stop(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                process.terminate()
        for process in self.processes:
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()

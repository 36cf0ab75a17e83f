"""``clusterbus demo``: three instances of one app exchanging pub/sub messages.

In one process on the memory hub by default, or on RabbitMQ with ``--amqp-url``. Every step
is checked; the demo exits non-zero when one did not behave.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from bus.facade import Bus
from bus.memory import MemoryHub
from bus.settings import Settings

NAMES = ("node-a", "node-b", "node-c")


@dataclass
class Node:
    """One demo instance and what it saw."""

    label: str
    bus: Bus
    seen: list[str] = field(default_factory=list)
    debounced_calls: int = 0


class DemoFailed(Exception):
    """A demo step did not behave as the product promises."""


class Demo:
    """The scripted scenario; ``run()`` returns the list of failed steps (empty on success)."""

    def __init__(self, console: Console, amqp_url: str | None, settings: Settings) -> None:
        self.console = console
        self.amqp_url = amqp_url
        self.settings = settings
        self.app = "clusterbus-demo"
        self.failures: list[str] = []
        self.nodes: list[Node] = []

    def _bus(self, hub: MemoryHub | None) -> Bus:
        if self.amqp_url is not None:
            return Bus(self.app, amqp_url=self.amqp_url, settings=self.settings)
        return Bus(self.app, hub=hub, settings=self.settings)

    async def run(self) -> list[str]:
        """Start three instances, walk the scenario, stop them."""
        hub = MemoryHub() if self.amqp_url is None else None
        self.nodes = [Node(label, self._bus(hub)) for label in NAMES]
        mode = self.nodes[0].bus.mode
        self.console.rule(f"clusterbus demo: app {self.app!r}, {mode} mode, 3 instances")
        try:
            for node in self.nodes:
                await node.bus.start()
                await node.bus.pubsub.subscribe("demo.news", self._recorder(node))
                await node.bus.pubsub.subscribe("demo.schema", self._debounced(node), debounce=0.3)
                self.console.print(f"  started {node.label} as instance {node.bus.instance_id}")
            await self._step_skip_self()
            await self._step_everyone()
            await self._step_only_self()
            await self._step_debounce()
        finally:
            for node in self.nodes:
                await node.bus.stop()
        self._table()
        return self.failures

    def _recorder(self, node: Node) -> Callable[[Any], Any]:
        async def handler(message: Any) -> None:
            node.seen.append(str(message["text"]))

        return handler

    def _debounced(self, node: Node) -> Callable[[Any], Any]:
        async def handler(message: Any) -> None:
            node.debounced_calls += 1
            self.console.print(
                f"  {node.label}: debounced schema handler ran once for {message['collection']!r}"
            )

        return handler

    async def _wait(self, check: Callable[[], bool], timeout: float = 10.0) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not check():
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def _settle(self, text: str) -> None:
        """Send a marker from node-a to everyone; once all have it, earlier messages arrived."""
        marker = f"marker:{text}"
        await self.nodes[0].bus.pubsub.publish("demo.news", {"text": marker}, skip_self=False)
        await self._wait(lambda: all(marker in n.seen for n in self.nodes))
        for node in self.nodes:
            if marker in node.seen:
                node.seen.remove(marker)

    def _check(self, step: str, ok: bool) -> None:
        mark = "[green]ok[/green]" if ok else "[red]FAILED[/red]"
        self.console.print(f"  {mark}  {step}")
        if not ok:
            self.failures.append(step)

    async def _step_skip_self(self) -> None:
        a, b, c = self.nodes
        self.console.print("\n[bold]1. node-a publishes 'hello' (skip_self=True, the default)")
        await a.bus.pubsub.publish("demo.news", {"text": "hello"})
        await self._settle("1")
        self._check("node-b and node-c got 'hello'", "hello" in b.seen and "hello" in c.seen)
        self._check("node-a did not get its own 'hello'", "hello" not in a.seen)

    async def _step_everyone(self) -> None:
        print_ = self.console.print
        print_("\n[bold]2. node-a publishes 'to all' with skip_self=False")
        await self.nodes[0].bus.pubsub.publish("demo.news", {"text": "to all"}, skip_self=False)
        await self._settle("2")
        self._check("all three got 'to all'", all("to all" in n.seen for n in self.nodes))

    async def _step_only_self(self) -> None:
        a, b, c = self.nodes
        self.console.print("\n[bold]3. node-b publishes 'just me' with only_self=True")
        await b.bus.pubsub.publish("demo.news", {"text": "just me"}, only_self=True)
        await self._settle("3")
        self._check("node-b got 'just me'", "just me" in b.seen)
        self._check("node-a and node-c did not", "just me" not in a.seen + c.seen)

    async def _step_debounce(self) -> None:
        a, b, c = self.nodes
        self.console.print(
            "\n[bold]4. node-a publishes the same schema change 5 times (handlers debounce 0.3 s)"
        )
        for _ in range(5):
            await a.bus.pubsub.publish("demo.schema", {"collection": "users"})
        ok = await self._wait(lambda: b.debounced_calls >= 1 and c.debounced_calls >= 1)
        await self._wait(
            lambda: all(n.bus.pubsub.pending_debounced == 0 for n in self.nodes), timeout=2
        )
        self._check(
            "node-b and node-c each ran the handler once (not 5 times)",
            ok and b.debounced_calls == 1 and c.debounced_calls == 1,
        )
        self._check("node-a (the sender) did not run it", a.debounced_calls == 0)

    def _table(self) -> None:
        table = Table(title="What each instance saw")
        table.add_column("instance")
        table.add_column("instance id")
        table.add_column("demo.news messages")
        table.add_column("debounced schema calls", justify="right")
        for node in self.nodes:
            table.add_row(
                node.label,
                node.bus.instance_id,
                ", ".join(node.seen) or "-",
                str(node.debounced_calls),
            )
        self.console.print()
        self.console.print(table)


async def run_demo(console: Console, amqp_url: str | None, settings: Settings) -> int:
    """Run the demo; 0 when every step behaved, 1 otherwise."""
    failures = await Demo(console, amqp_url, settings).run()
    if failures:
        console.print(f"\n[red bold]{len(failures)} step(s) failed:[/] " + "; ".join(failures))
        return 1
    console.print("\n[green bold]every step behaved[/]")
    return 0

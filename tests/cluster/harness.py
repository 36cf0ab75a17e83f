"""A throw-away RabbitMQ cluster of local nodes, for the cluster tests.

Runs the ``rabbitmq-server`` installed on this machine (``/usr/lib/rabbitmq/bin``, override
with ``CLUSTERBUS_RABBIT_BIN``) as ``size`` separate nodes ``cbcluster1@localhost``,
``cbcluster2@localhost``, ... Each node has its own AMQP port (5681, 5682, ...), Erlang
distribution port (AMQP port + 20000), config file, enabled-plugins file, env file, data,
log and pid files, all under one base directory, and the nodes share an Erlang cookie of
their own (``<base>/.erlang.cookie``, found through ``HOME=<base>`` by the servers and by
``rabbitmqctl``). Everything listens on 127.0.0.1 only. Only epmd (127.0.0.1:4369) is shared
with the machine's default broker.

The default broker (``rabbit@localhost`` on 5672) is never touched: its cookie, config and
env file are not read (``RABBITMQ_CONF_ENV_FILE`` points at our own file), every
``rabbitmqctl`` call names one of our nodes with ``-n``, and every process the harness
stops or kills is found by the marker ``-clusterbus_node <node name>`` that the harness
puts on the command line of its own Erlang VMs.

Indexes are 0-based in the Python API (``cluster.nodes[i]``, ``stop_node(i)``,
``queue_leader`` returns an index into ``nodes``); the command line takes 1-based node
numbers, the digit of the node name::

    python -m tests.cluster.harness up | down | status | stop N | kill N | start N

The command line keeps its cluster in ``/tmp/clusterbus-cluster`` (or
``$CLUSTERBUS_CLUSTER_DIR``), so ``up`` and a later ``down`` can run in different processes.

The code is in layers: ``node_files`` (each node's name and ports, directories, env,
config and the cookie), ``node_processes`` (finding, spawning, signalling and waiting for the
nodes' Erlang VMs; ports and epmd), this module (``RabbitCluster``: the public operations,
joining and watching the cluster) and ``harness_cli`` (the command line).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from tests.cluster.harness_cli import main
from tests.cluster.node_files import BASE_MARKER, ClusterError, Node, default_base_dir
from tests.cluster.node_processes import (
    POLL_INTERVAL,
    RABBIT_BIN,
    STOP_GRACE,
    NodeProcesses,
    epmd_names,
    port_open,
)

__all__ = [
    "ClusterError",
    "Node",
    "RabbitCluster",
    "default_base_dir",
    "epmd_names",
    "main",
    "port_open",
]

HOSTNAME = "localhost"
DIST_PORT_OFFSET = 20000
DEFAULT_NODE = "rabbit@localhost"

_T = TypeVar("_T")
_PID_NODE = re.compile(r"^<([^<>@]+@[^<>]+?)\.\d+\.\d+\.\d+>$")  # <node.creation.id.serial>


def _parallel(fn: Callable[[int], _T], indices: Iterable[int]) -> dict[int, _T | Exception]:
    """Run ``fn(i)`` for every index in threads; each result or the exception it raised."""
    todo = list(indices)
    if not todo:
        return {}

    def call(i: int) -> _T | Exception:
        try:
            return fn(i)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(max_workers=len(todo)) as pool:
        return dict(zip(todo, pool.map(call, todo), strict=True))


def _raise_first(results: dict[int, _T | Exception]) -> None:
    for value in results.values():
        if isinstance(value, Exception):
            raise value


class RabbitCluster(NodeProcesses):
    """``size`` local RabbitMQ 3.10 nodes joined into one cluster, under ``base_dir``."""

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        size: int = 3,
        first_port: int = 5681,
        prefix: str = "cbcluster",
    ) -> None:
        """Describe the cluster; nothing runs until ``start``."""
        if size < 1:
            raise ValueError("a cluster has at least one node")
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", prefix):
            raise ValueError(f"prefix {prefix!r}: lower-case letters, digits, _ and - only")
        nodes = [
            Node(
                index=i,
                name=f"{prefix}{i + 1}@{HOSTNAME}",
                amqp_port=first_port + i,
                dist_port=first_port + i + DIST_PORT_OFFSET,
            )
            for i in range(size)
        ]
        super().__init__(
            Path(base_dir) if base_dir is not None else default_base_dir(), nodes, prefix
        )
        if any(node.name == DEFAULT_NODE for node in self.nodes):
            raise ValueError(f"the harness never runs a node named {DEFAULT_NODE}")
        self.reused = False
        self.bring_up_seconds: float | None = None

    # ----------------------------------------------------------------- public API

    def urls(self) -> list[str]:
        """The AMQP URL of every node, in node order."""
        return [node.url for node in self.nodes]

    def url_list(self) -> str:
        """The URLs joined by ``;`` (the form the library's settings take)."""
        return ";".join(self.urls())

    def start(self, timeout: float = 180) -> None:
        """Bring every node up, join them to node 0 and wait until all see each other.

        A healthy cluster left by an earlier run in the same base directory is reused
        (``self.reused`` becomes True); otherwise lingering nodes of this prefix are
        stopped, the base directory is wiped and a fresh cluster is created.
        """
        started = time.monotonic()
        deadline = started + timeout
        self.reused = False
        if self._healthy():
            self.reused = True
            self.bring_up_seconds = time.monotonic() - started
            return
        self._clear_stale()
        self._prepare_base_dir()
        self._check_ports_free()
        everyone = range(self.size)
        for i in everyone:
            self._spawn(i)
        self._wait_ports(everyone, deadline, "booting")
        # nodes 2..n joined node 1 by peer discovery while booting, unless node 1 was late
        views = _parallel(self.cluster_view, everyone)
        names = {node.name for node in self.nodes}
        if not all(isinstance(view, set) and names <= view for view in views.values()):
            seed = self.nodes[0].name
            strays = [
                i
                for i, view in views.items()
                if i > 0 and not (isinstance(view, set) and seed in view)
            ]
            self._join(strays, deadline)
            self._wait_cluster(everyone, everyone, deadline, "forming the cluster")
        self.bring_up_seconds = time.monotonic() - started

    def stop_node(self, i: int, timeout: float = 60) -> None:
        """Stop node ``i`` gracefully (``rabbitmqctl stop``: the whole VM) and wait for it."""
        deadline = time.monotonic() + timeout
        self.ctl(i, "stop", timeout=min(STOP_GRACE, timeout))
        self._wait_down(i, deadline, "stopping (rabbitmqctl stop)")
        self._record_stop(i)

    def kill_node(self, i: int, timeout: float = 30) -> None:
        """SIGKILL node ``i``'s Erlang VM and wait until its port is closed."""
        deadline = time.monotonic() + timeout
        pids = self._node_pids(i)
        if not pids:
            raise ClusterError(f"{self.nodes[i].name}: no running VM to kill")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._wait_down(i, deadline, "dying after SIGKILL")

    def start_node(self, i: int, timeout: float = 120) -> None:
        """Start a stopped or killed node again and wait until the others see it running.

        The node rejoins by itself: its data directory knows the cluster.
        """
        deadline = time.monotonic() + timeout
        if not self.running(i):
            if self._node_pids(i):  # the VM runs but the app does not (stop_app)
                self.ctl(i, "start_app", timeout=self._left(deadline))
            else:
                self._spawn(i)
        self._wait_ports([i], deadline, "restarting")
        live = [k for k in range(self.size) if k == i or self.running(k)]
        self._wait_cluster(live, live, deadline, f"rejoining {self.nodes[i].name}")

    def stop_all(self, timeout: float = 120) -> None:
        """Stop every running node gracefully, one after the other (node 0 last)."""
        deadline = time.monotonic() + timeout
        for i in reversed(range(self.size)):
            if self._node_pids(i):
                self.ctl(i, "stop", timeout=min(STOP_GRACE, self._left(deadline)))
                self._wait_down(i, deadline, "stopping (rabbitmqctl stop)")
                self._record_stop(i)

    def start_all(self, timeout: float = 180) -> None:
        """Start every stopped node, all at once, and wait until the cluster is whole again.

        RabbitMQ 3.10 (mnesia) makes a restarted node wait for the node that stopped last;
        starting them together (that node first) satisfies every node's wait.
        """
        deadline = time.monotonic() + timeout
        order = self._stop_order()
        last_first = [i for i in reversed(order) if i < self.size]
        last_first += [i for i in range(self.size) if i not in last_first]
        for i in last_first:
            if not self._node_pids(i):
                self._spawn(i)
        everyone = range(self.size)
        self._wait_ports(everyone, deadline, "starting the whole cluster")
        self._wait_cluster(everyone, everyone, deadline, "re-forming the cluster")
        with contextlib.suppress(FileNotFoundError):
            (self.base_dir / "stop-order").unlink()

    def teardown(self) -> None:
        """Stop every node (SIGKILL when a graceful stop takes over ~20 s); remove base_dir."""

        def stop(i: int) -> None:
            if not self._node_pids(i):
                return
            with contextlib.suppress(ClusterError):
                self.ctl(i, "stop", timeout=STOP_GRACE)
            try:
                self._wait_down(i, time.monotonic() + STOP_GRACE, "stopping")
            except ClusterError:
                for pid in self._node_pids(i):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self._wait_down(i, time.monotonic() + STOP_GRACE, "dying after SIGKILL")

        _raise_first(_parallel(stop, range(self.size)))
        self._reap()
        self._remove_base_dir()

    def ctl(self, i: int, *args: str, timeout: float = 60) -> str:
        """Run ``rabbitmqctl -q -n <node i> ARGS`` with our cookie; its stdout.

        Raises ``ClusterError`` with stderr when it fails or takes longer than ``timeout``.
        """
        node = self.nodes[i]
        command = [str(RABBIT_BIN / "rabbitmqctl"), "-q", "-n", node.name, *args]
        try:
            result = subprocess.run(
                command,
                env=self._env(i),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=max(timeout, 1.0),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(
                f"{node.name}: `rabbitmqctl {' '.join(args)}` did not finish within {timeout:.0f} s"
            ) from exc
        if result.returncode != 0:
            detail = (result.stderr.strip() or result.stdout.strip())[-2000:]
            raise ClusterError(
                f"{node.name}: `rabbitmqctl {' '.join(args)}` failed "
                f"(exit {result.returncode}): {detail}"
            )
        return result.stdout

    def cluster_view(self, i: int) -> set[str]:
        """The ``running_nodes`` node ``i`` reports (``cluster_status``)."""
        out = self.ctl(i, "cluster_status", "--formatter", "json", timeout=30)
        try:
            status = json.loads(out[out.index("{") :])
        except ValueError as exc:
            raise ClusterError(f"{self.nodes[i].name}: unreadable cluster_status: {out!r}") from exc
        return set(status.get("running_nodes", []))

    def queue_leader(self, queue: str, vhost: str = "/") -> int | None:
        """Index of the node leading (quorum) or hosting (classic) ``queue``; None if absent.

        Asks the first running node for ``list_queues name type leader pid``. The table
        format is parsed, not JSON: the JSON formatter prints pids as ``#PID<12767.848.0>``,
        without the node name a classic queue needs (queue names cannot hold tabs).
        """
        out: str | None = None
        errors: list[str] = []
        for i in range(self.size):
            if not self.running(i):
                continue
            try:
                out = self.ctl(
                    i, "list_queues", "-p", vhost, "--no-table-headers",
                    "name", "type", "leader", "pid",
                )  # fmt: skip
                break
            except ClusterError as exc:
                errors.append(str(exc))
        if out is None:
            raise ClusterError(
                "no node answered list_queues: " + "; ".join(errors or ["none runs"])
            )
        for line in out.splitlines():
            name, qtype, leader, pid = [*line.split("\t"), "", "", ""][:4]
            if name != queue:
                continue
            if qtype != "quorum" or not leader:
                match = _PID_NODE.match(pid.strip())
                leader = match.group(1) if match else leader
            return self._index_of(leader) if leader else None
        return None

    def status(self) -> list[dict[str, object]]:
        """One dict per node: name, port, pids, whether AMQP answers and its running_nodes."""
        report: list[dict[str, object]] = []
        for node in self.nodes:
            up = self.running(node.index)
            view: object = None
            if up:
                try:
                    view = sorted(self.cluster_view(node.index))
                except ClusterError as exc:
                    view = f"error: {exc}"
            report.append(
                {
                    "node": node.name,
                    "amqp_port": node.amqp_port,
                    "pids": self._node_pids(node.index),
                    "amqp_answers": up,
                    "running_nodes": view,
                }
            )
        return report

    # ----------------------------------------------------------------- cluster internals

    def _join(self, joiners: Sequence[int], deadline: float) -> None:
        """Join nodes that booted standalone to node 0 (stop_app, join_cluster, start_app)."""
        if not joiners:
            return
        _raise_first(_parallel(lambda i: self.ctl(i, "stop_app"), joiners))
        for i in joiners:  # one at a time: concurrent joins can race in mnesia
            self.ctl(i, "join_cluster", self.nodes[0].name)
        _raise_first(
            _parallel(lambda i: self.ctl(i, "start_app", timeout=self._left(deadline)), joiners)
        )

    def _index_of(self, name: str) -> int | None:
        for node in self.nodes:
            if node.name == name:
                return node.index
        return None

    @staticmethod
    def _left(deadline: float) -> float:
        return max(deadline - time.monotonic(), 1.0)

    # ----------------------------------------------------------------- checks and waits

    def _healthy(self) -> bool:
        """True when a cluster of ours already runs in base_dir with every node in it."""
        if not (self.cookie_file.exists() and (self.base_dir / BASE_MARKER).exists()):
            return False
        if not all(self.running(i) and self._node_pids(i) for i in range(self.size)):
            return False
        everyone = {node.name for node in self.nodes}
        views = _parallel(self.cluster_view, range(self.size))
        return all(isinstance(v, set) and everyone <= v for v in views.values())

    def _wait_cluster(
        self, observers: Iterable[int], members: Iterable[int], deadline: float, what: str
    ) -> None:
        """Poll until every observer node lists every member node in its running_nodes."""
        observing = list(observers)
        expected = {self.nodes[i].name for i in members}
        while True:
            self._wait_ports(observing, deadline, what)
            views = _parallel(self.cluster_view, observing)
            missing = {
                i: view if isinstance(view, Exception) else expected - view
                for i, view in views.items()
                if isinstance(view, Exception) or not expected <= view
            }
            if not missing:
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    "\n".join(
                        f"{self.nodes[i].name}: while {what}, "
                        + (
                            f"cluster_status failed: {problem}"
                            if isinstance(problem, Exception)
                            else f"running_nodes lacks {sorted(problem)}"
                        )
                        + f"\n{self._log_tail(i)}"
                        for i, problem in missing.items()
                    )
                )
            time.sleep(POLL_INTERVAL)


if __name__ == "__main__":
    sys.exit(main())

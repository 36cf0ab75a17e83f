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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

__all__ = ["ClusterError", "Node", "RabbitCluster", "default_base_dir", "main"]

RABBIT_BIN = Path(os.environ.get("CLUSTERBUS_RABBIT_BIN", "/usr/lib/rabbitmq/bin"))
DEFAULT_BASE_DIR = Path("/tmp/clusterbus-cluster")
HOST = "127.0.0.1"
HOSTNAME = "localhost"
EPMD_PORT = 4369
DIST_PORT_OFFSET = 20000
MARKER_FLAG = "-clusterbus_node"
BASE_MARKER = ".clusterbus-cluster"
DEFAULT_NODE = "rabbit@localhost"
POLL_INTERVAL = 0.2
STOP_GRACE = 20.0
LOG_TAIL_LINES = 25
CTL_ERL_ARGS = "-kernel inet_dist_use_interface {127,0,0,1}"

_T = TypeVar("_T")
_PID_NODE = re.compile(r"^<([^<>@]+@[^<>]+?)\.\d+\.\d+\.\d+>$")  # <node.creation.id.serial>


class ClusterError(RuntimeError):
    """A node did not start, stop, join or answer as expected."""


@dataclass
class Node:
    """One node of the cluster: ``index`` is its 0-based place in ``RabbitCluster.nodes``."""

    index: int
    name: str
    amqp_port: int
    dist_port: int

    @property
    def url(self) -> str:
        """The AMQP URL of this node (guest user, default vhost)."""
        return f"amqp://guest:guest@{HOST}:{self.amqp_port}/"

    @property
    def short_name(self) -> str:
        """The node name without ``@host`` (as epmd knows it)."""
        return self.name.split("@", 1)[0]


def default_base_dir() -> Path:
    """The base directory of the command-line cluster: ``$CLUSTERBUS_CLUSTER_DIR`` or /tmp."""
    return Path(os.environ.get("CLUSTERBUS_CLUSTER_DIR", str(DEFAULT_BASE_DIR)))


def port_open(port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection((HOST, port), timeout):
            return True
    except OSError:
        return False


def epmd_names() -> dict[str, int]:
    """The node names registered in the local epmd, with their distribution ports.

    Empty when epmd does not answer (then no node of any name runs on this machine).
    """
    try:
        with socket.create_connection((HOST, EPMD_PORT), 2.0) as sock:
            sock.sendall(b"\x00\x01n")  # NAMES_REQ
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
    except OSError:
        return {}
    names: dict[str, int] = {}
    for line in data[4:].decode(errors="replace").splitlines():
        match = re.match(r"name (\S+) at port (\d+)", line)
        if match:
            names[match.group(1)] = int(match.group(2))
    return names


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def _is_node_vm(pid: int, node_name: str) -> bool:
    """True when ``pid`` is an Erlang VM the harness started for ``node_name``."""
    args = _cmdline(pid)
    if not args or not args[0].endswith("beam.smp"):
        return False
    return any(
        arg == MARKER_FLAG and args[k + 1 : k + 2] == [node_name] for k, arg in enumerate(args)
    )


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


class RabbitCluster:
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
        self.base_dir = Path(base_dir) if base_dir is not None else default_base_dir()
        self.size = size
        self.prefix = prefix
        self.nodes: list[Node] = [
            Node(
                index=i,
                name=f"{prefix}{i + 1}@{HOSTNAME}",
                amqp_port=first_port + i,
                dist_port=first_port + i + DIST_PORT_OFFSET,
            )
            for i in range(size)
        ]
        if any(node.name == DEFAULT_NODE for node in self.nodes):
            raise ValueError(f"the harness never runs a node named {DEFAULT_NODE}")
        self.reused = False
        self.bring_up_seconds: float | None = None
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    # ----------------------------------------------------------------- public API

    def urls(self) -> list[str]:
        """The AMQP URL of every node, in node order."""
        return [node.url for node in self.nodes]

    def url_list(self) -> str:
        """The URLs joined by ``;`` (the form the library's settings take)."""
        return ";".join(self.urls())

    def running(self, i: int) -> bool:
        """True when node ``i`` accepts AMQP connections (its rabbit app runs)."""
        return port_open(self.nodes[i].amqp_port)

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

    # ----------------------------------------------------------------- files and env

    @property
    def cookie_file(self) -> Path:
        """The Erlang cookie of the cluster (``HOME`` of every rabbit command is base_dir)."""
        return self.base_dir / ".erlang.cookie"

    def node_dir(self, i: int) -> Path:
        """Config, data and logs of node ``i``."""
        return self.base_dir / f"node{i + 1}"

    def log_file(self, i: int) -> Path:
        """The main log file of node ``i``."""
        return self.node_dir(i) / "log" / f"{self.nodes[i].name}.log"

    def _stdout_file(self, i: int) -> Path:
        return self.node_dir(i) / "stdout.log"

    def _pid_file(self, i: int) -> Path:
        return self.node_dir(i) / f"{self.nodes[i].name}.pid"

    def _env(self, i: int) -> dict[str, str]:
        node = self.nodes[i]
        home = self.node_dir(i)
        mnesia = home / "mnesia"
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": str(self.base_dir),
            "ERL_EPMD_ADDRESS": HOST,
            "RABBITMQ_CONF_ENV_FILE": str(self.base_dir / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
            "RABBITMQ_CONFIG_FILES": str(home / "conf.d" / "*.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(home / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(home / "plugins-expand"),
            "RABBITMQ_MNESIA_BASE": str(mnesia),
            "RABBITMQ_MNESIA_DIR": str(mnesia / node.name),
            "RABBITMQ_LOG_BASE": str(home / "log"),
            "RABBITMQ_LOGS": str(self.log_file(i)),
            "RABBITMQ_PID_FILE": str(self._pid_file(i)),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                f"-kernel inet_dist_use_interface {{127,0,0,1}} {MARKER_FLAG} {node.name}"
            ),
            "RABBITMQ_CTL_ERL_ARGS": CTL_ERL_ARGS,
        }

    def _config(self, i: int) -> str:
        return "\n".join(
            [
                "# written by tests/cluster/harness.py",
                f"listeners.tcp.default = {HOST}:{self.nodes[i].amqp_port}",
                "loopback_users = none",
                "vm_memory_high_watermark.relative = 0.2",
                "disk_free_limit.absolute = 50MB",
                f"cluster_name = {self.prefix}",
                "log.console = false",
                "log.file.level = info",
                *(self._discovery_config() if i > 0 else []),
                "",
            ]
        )

    def _discovery_config(self) -> list[str]:
        """Peer discovery for nodes 2..n: on their first boot they join node 1 by themselves.

        This saves the stop_app / join_cluster / start_app round of a joining node (a
        second boot). A node that finds node 1 down for 30 s boots standalone instead, and
        ``start`` then joins it with rabbitmqctl. Later boots (data directory not empty)
        skip peer discovery.
        """
        return [
            "cluster_formation.peer_discovery_backend = classic_config",
            f"cluster_formation.classic_config.nodes.1 = {self.nodes[0].name}",
            "cluster_formation.discovery_retry_limit = 60",
            "cluster_formation.discovery_retry_interval = 500",
        ]

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

    def _prepare_base_dir(self) -> None:
        self.base_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.base_dir / BASE_MARKER).write_text("a RabbitCluster of tests/cluster/harness.py\n")
        if not self.cookie_file.exists():
            self.cookie_file.write_text(secrets.token_hex(20).upper())
            self.cookie_file.chmod(0o400)
        (self.base_dir / "rabbitmq-env.conf").write_text(
            "# our own env file: /etc/rabbitmq/rabbitmq-env.conf must not be read\n"
        )
        for i in range(self.size):
            home = self.node_dir(i)
            for sub in ("log", "mnesia", "conf.d", "plugins-expand"):
                (home / sub).mkdir(parents=True, exist_ok=True)
            (home / "rabbitmq.conf").write_text(self._config(i))
            (home / "enabled_plugins").write_text("[].\n")

    def _remove_base_dir(self) -> None:
        if not self.base_dir.exists():
            return
        if not (self.base_dir / BASE_MARKER).exists() and any(self.base_dir.iterdir()):
            raise ClusterError(
                f"refusing to delete {self.base_dir}: it is not empty and has no {BASE_MARKER}"
            )
        shutil.rmtree(self.base_dir)

    def _record_stop(self, i: int) -> None:
        if self.base_dir.exists():
            with (self.base_dir / "stop-order").open("a") as fh:
                fh.write(f"{i}\n")

    def _stop_order(self) -> list[int]:
        """Indexes of the nodes ``stop_node``/``stop_all`` stopped, the last stopped last."""
        try:
            recorded = [int(x) for x in (self.base_dir / "stop-order").read_text().split()]
        except (FileNotFoundError, ValueError):
            return []
        return [i for k, i in enumerate(recorded) if i not in recorded[k + 1 :]]

    def _log_tail(self, i: int) -> str:
        parts: list[str] = []
        for path in (self._stdout_file(i), self.log_file(i)):
            try:
                lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            except OSError:
                continue
            parts.append(f"--- last lines of {path} ---\n" + "\n".join(lines))
        return "\n".join(parts) or f"(no log files in {self.node_dir(i)})"

    # ----------------------------------------------------------------- processes

    def _spawn(self, i: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._pid_file(i).unlink()
        old = self._procs.pop(i, None)
        if old is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                old.wait(timeout=5)
        with self._stdout_file(i).open("ab") as out:
            self._procs[i] = subprocess.Popen(
                [str(RABBIT_BIN / "rabbitmq-server")],
                env=self._env(i),
                cwd=self.node_dir(i),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _node_pids(self, i: int) -> list[int]:
        """The pids of the Erlang VM(s) running node ``i`` (pid file, then /proc scan)."""
        name = self.nodes[i].name
        found: set[int] = set()
        with contextlib.suppress(OSError, ValueError):
            pid = int(self._pid_file(i).read_text().strip())
            if _alive(pid) and _is_node_vm(pid, name):
                found.add(pid)
        if not found:
            for entry in os.scandir("/proc"):
                if entry.name.isdigit():
                    pid = int(entry.name)
                    if _is_node_vm(pid, name) and _alive(pid):
                        found.add(pid)
        return sorted(found)

    def _reap(self) -> None:
        for proc in self._procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._procs.clear()

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

    def _clear_stale(self) -> None:
        """Stop nodes of our names that still run (from an earlier run); wipe base_dir."""
        registered = epmd_names()
        stale: list[Node] = []
        for node in self.nodes:
            pids = self._node_pids(node.index)
            if not pids and node.short_name in registered:
                raise ClusterError(
                    f"{node.name} is registered in epmd (distribution port "
                    f"{registered[node.short_name]}) by a VM the harness did not start; "
                    "stop it first"
                )
            if pids:
                stale.append(node)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)  # rabbit stops gracefully on SIGTERM
        for node in stale:
            try:
                self._wait_down(node.index, time.monotonic() + STOP_GRACE, "stopping (SIGTERM)")
            except ClusterError:
                for pid in self._node_pids(node.index):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self._wait_down(node.index, time.monotonic() + 10, "dying after SIGKILL")
        self._reap()
        self._remove_base_dir()

    def _check_ports_free(self) -> None:
        for node in self.nodes:
            for port, what in ((node.amqp_port, "AMQP"), (node.dist_port, "distribution")):
                if port_open(port):
                    raise ClusterError(
                        f"{node.name}: its {what} port {port} is taken by another process"
                    )

    def _wait_ports(self, indices: Iterable[int], deadline: float, what: str) -> None:
        """Poll until every node in ``indices`` accepts AMQP connections."""
        pending = list(indices)
        while True:
            for i in list(pending):
                if self.running(i):
                    pending.remove(i)
                    continue
                proc = self._procs.get(i)
                if proc is not None and proc.poll() is not None:
                    raise ClusterError(
                        f"{self.nodes[i].name}: rabbitmq-server exited with code "
                        f"{proc.returncode} while {what}\n{self._log_tail(i)}"
                    )
            if not pending:
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    "\n".join(
                        f"{self.nodes[i].name}: AMQP port {self.nodes[i].amqp_port} did not "
                        f"open in time while {what}\n{self._log_tail(i)}"
                        for i in pending
                    )
                )
            time.sleep(POLL_INTERVAL)

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

    def _wait_down(self, i: int, deadline: float, what: str) -> None:
        """Poll until node ``i``'s VM is gone and its AMQP port is closed."""
        while self._node_pids(i) or self.running(i):
            if time.monotonic() > deadline:
                node = self.nodes[i]
                raise ClusterError(
                    f"{node.name}: still running (pids {self._node_pids(i)}, AMQP port "
                    f"{node.amqp_port} open: {self.running(i)}) after {what}\n{self._log_tail(i)}"
                )
            time.sleep(POLL_INTERVAL)
        proc = self._procs.pop(i, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.cluster.harness up|down|status|stop N|kill N|start N``."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.cluster.harness",
        description="A local RabbitMQ cluster for the cluster tests (N is 1-based).",
    )
    parser.add_argument(
        "--base-dir",
        type=Path,
        default=None,
        help=f"default: $CLUSTERBUS_CLUSTER_DIR or {DEFAULT_BASE_DIR}",
    )
    parser.add_argument("--size", type=int, default=3)
    parser.add_argument("--first-port", type=int, default=5681)
    parser.add_argument("--prefix", default="cbcluster")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start the cluster (reuses a healthy one)")
    commands.add_parser("down", help="stop every node and remove the base directory")
    commands.add_parser("status", help="show every node's state")
    for name in ("stop", "kill", "start"):
        commands.add_parser(name, help=f"{name} node N").add_argument("n", type=int)
    args = parser.parse_args(argv)
    cluster = RabbitCluster(
        args.base_dir, size=args.size, first_port=args.first_port, prefix=args.prefix
    )
    try:
        if args.command == "up":
            cluster.start()
            how = "reused" if cluster.reused else "started"
            print(f"cluster {how} in {cluster.bring_up_seconds:.1f} s ({cluster.base_dir})")
            print(cluster.url_list())
        elif args.command == "down":
            cluster.teardown()
            print(f"cluster stopped, {cluster.base_dir} removed")
        elif args.command == "status":
            for row in cluster.status():
                print(json.dumps(row))
        else:
            if not 1 <= args.n <= cluster.size:
                parser.error(f"N must be between 1 and {cluster.size}")
            index = args.n - 1
            action = {
                "stop": cluster.stop_node,
                "kill": cluster.kill_node,
                "start": cluster.start_node,
            }[args.command]
            started = time.monotonic()
            action(index)
            took = time.monotonic() - started
            print(f"{args.command} {cluster.nodes[index].name}: done in {took:.1f} s")
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The Erlang VMs of the test cluster's nodes: finding, spawning, signalling, waiting.

Every VM the harness starts carries ``-clusterbus_node <node name>`` on its command line
(``MARKER_FLAG``, put there by the node's environment); a VM is taken for one of ours only
with that marker, found through the node's pid file or a scan of /proc, so nothing else on
the machine is ever signalled. What listens is read from TCP ports on 127.0.0.1 and from
the names registered in the local epmd. ``NodeProcesses`` is the middle layer of
``RabbitCluster`` (``tests.cluster.harness``), on top of ``NodeFiles``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from tests.cluster.node_files import HOST, MARKER_FLAG, ClusterError, Node, NodeFiles

RABBIT_BIN = Path(os.environ.get("CLUSTERBUS_RABBIT_BIN", "/usr/lib/rabbitmq/bin"))
EPMD_PORT = 4369
POLL_INTERVAL = 0.2
STOP_GRACE = 20.0


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


class NodeProcesses(NodeFiles):
    """The Erlang VMs of ``nodes``: spawn, find, signal and wait for them, node by node."""

    def __init__(self, base_dir: Path, nodes: list[Node], prefix: str) -> None:
        """Describe the nodes; no VM runs until ``_spawn``."""
        super().__init__(base_dir, nodes, prefix)
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    def running(self, i: int) -> bool:
        """True when node ``i`` accepts AMQP connections (its rabbit app runs)."""
        return port_open(self.nodes[i].amqp_port)

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

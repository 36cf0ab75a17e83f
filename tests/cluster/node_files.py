"""What each node of the test cluster is, and the files it runs from.

``Node`` is one node's name and ports. ``NodeFiles`` lays out the base directory of a
cluster: the Erlang cookie and the env file the nodes share, and per node a directory with
its config file, enabled-plugins file, data, logs and pid file. It writes and removes them,
and builds the environment every ``rabbitmq-server`` and ``rabbitmqctl`` of a node runs with
(which puts the harness's marker on the command line of the node's Erlang VM). It is the
bottom layer of ``RabbitCluster`` (``tests.cluster.harness``).
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

DEFAULT_BASE_DIR = Path("/tmp/clusterbus-cluster")
HOST = "127.0.0.1"
MARKER_FLAG = "-clusterbus_node"
BASE_MARKER = ".clusterbus-cluster"
LOG_TAIL_LINES = 25
CTL_ERL_ARGS = "-kernel inet_dist_use_interface {127,0,0,1}"


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
    def management_port(self) -> int:
        """The management API's port (node 1 only runs the plugin): AMQP port + 10000."""
        return self.amqp_port + 10000

    @property
    def management_url(self) -> str:
        """The management API of this node (guest user), when it runs the plugin."""
        return f"http://guest:guest@{HOST}:{self.management_port}"

    @property
    def short_name(self) -> str:
        """The node name without ``@host`` (as epmd knows it)."""
        return self.name.split("@", 1)[0]


def default_base_dir() -> Path:
    """The base directory of the command-line cluster: ``$CLUSTERBUS_CLUSTER_DIR`` or /tmp."""
    return Path(os.environ.get("CLUSTERBUS_CLUSTER_DIR", str(DEFAULT_BASE_DIR)))


class NodeFiles:
    """The files of ``nodes`` under ``base_dir``: paths, env, config, cookie, directories."""

    def __init__(self, base_dir: Path, nodes: list[Node], prefix: str) -> None:
        """Describe the files; nothing is written until ``_prepare_base_dir``."""
        self.base_dir = base_dir
        self.size = len(nodes)
        self.prefix = prefix
        self.nodes = nodes

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
                *(self._discovery_config() if i > 0 else self._management_config()),
                "",
            ]
        )

    def _management_config(self) -> list[str]:
        """Node 1 runs the management plugin (``clusterbus doctor --management-url``)."""
        return [
            f"management.tcp.ip = {HOST}",
            f"management.tcp.port = {self.nodes[0].management_port}",
        ]

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
            plugins = "[rabbitmq_management]" if i == 0 else "[]"
            (home / "enabled_plugins").write_text(f"{plugins}.\n")

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

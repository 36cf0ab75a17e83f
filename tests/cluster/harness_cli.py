"""The command line of the cluster harness: ``python -m tests.cluster.harness ...``.

``main`` is re-exported by ``tests.cluster.harness``, whose ``__main__`` block runs it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tests.cluster.node_files import DEFAULT_BASE_DIR, ClusterError


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
    # imported here: tests.cluster.harness imports this module to re-export main
    from tests.cluster.harness import RabbitCluster

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

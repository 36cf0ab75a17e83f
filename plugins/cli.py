"""The ``clusterbus`` console script: the bus's commands plus ``demo`` and ``node``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence

from pydantic import ValidationError
from rich.console import Console

from bus import cli as bus_cli
from bus.logs import configure_logging
from bus.settings import Settings
from plugins.demo_node import APP_NAME


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clusterbus`` console script."""
    root, commands = bus_cli.parser()
    demo = commands.add_parser("demo", help="three instances running the example plugins")
    demo.add_argument(
        "--amqp-url",
        default=None,
        help="run on RabbitMQ at this URL, as three processes (default: in memory, one process)",
    )
    demo.add_argument(
        "--log-file",
        default="clusterbus-demo.log",
        help="where the structured (JSON) logs go (default: %(default)s)",
    )
    node = commands.add_parser("node", help="run one instance of the demo service")
    node.add_argument("--amqp-url", default=None, help="RabbitMQ URL (default: the setting)")
    node.add_argument("--label", default=None, help="this node's name (default: host name)")
    node.add_argument("--app", default=APP_NAME, help="the app name (default: %(default)s)")
    node.add_argument(
        "--database-url",
        default=None,
        help="SQLAlchemy URL (default: CLUSTERBUS_DEMO_DATABASE_URL)",
    )
    node.add_argument("--log-file", default=None, help="JSON logs here (default: stderr)")
    args = root.parse_args(argv)
    console = Console()
    settings = bus_cli.load_settings(console)
    if settings is None:
        return 2
    if args.command in bus_cli.BUS_COMMANDS:
        return bus_cli.run(args, console, settings)
    if args.command == "node":
        try:
            return _node(args, settings)
        except Exception as exc:  # a command line reports in one line, it does not trace back
            return _failed(console, "node", exc)
    from plugins.demo import run_demo

    with open(args.log_file, "a", encoding="utf-8") as log_file:
        configure_logging("DEBUG", "json", force=True, file=log_file)
        try:
            code = asyncio.run(run_demo(console, args.amqp_url, settings, args.log_file))
        except Exception as exc:  # a command line reports in one line, it does not trace back
            code = _failed(console, "demo", exc)
    console.print(f"structured logs: {args.log_file}")
    return code


def _failed(console: Console, command: str, exc: Exception) -> int:
    """Print why ``command`` failed (one redacted line); its exit status."""
    console.print(bus_cli.failure(command, exc), style="red", markup=False, soft_wrap=True)
    return 2 if isinstance(exc, ValidationError) else 1


def _node(args: argparse.Namespace, settings: Settings) -> int:
    from plugins.demo_node import run_node

    with contextlib.ExitStack() as files:
        target = (
            files.enter_context(open(args.log_file, "a", encoding="utf-8"))
            if args.log_file
            else None
        )
        configure_logging(
            settings.log_level, "json" if target else settings.log_format, force=True, file=target
        )
        return asyncio.run(
            run_node(
                label=args.label,
                amqp_url=args.amqp_url,
                database_url=args.database_url,
                app_name=args.app,
                settings=settings,
            )
        )


if __name__ == "__main__":
    sys.exit(main())

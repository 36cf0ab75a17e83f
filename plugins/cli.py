"""The ``clusterbus`` console script: the bus's commands plus ``demo`` and ``node``.

Only the bus's dependencies are imported here: the demo (:mod:`plugins.demo.app`,
:mod:`plugins.demo.node`) needs the ``demo`` extra (SQLAlchemy, rich) and is imported by its
commands, so ``clusterbus --help``, ``settings`` and ``dlq`` work from the wheel without
extras; they print through :class:`bus.terminal.Terminal`, in colour when rich is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from bus import cli as bus_cli
from bus.logs import configure_logging
from bus.settings import Settings
from bus.terminal import Terminal
from plugins.demo import APP_NAME

EXTRAS = {
    "sqlalchemy": "demo",
    "aiosqlite": "demo",
    "rich": "demo",
    "uvicorn": "demo",
    "psycopg": "postgres",
}
"""The extra that installs each optional module the demo imports."""


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
    node.add_argument(
        "--http-port",
        type=_port,
        default=None,
        metavar="PORT",
        help="serve /health/live and /health/ready on this port (default: no HTTP server)",
    )
    node.add_argument(
        "--http-host",
        default="127.0.0.1",
        help="the address --http-port listens on (default: %(default)s; 0.0.0.0 in a container)",
    )
    args = root.parse_args(argv)
    terminal = Terminal()
    settings = bus_cli.load_settings(terminal)
    if settings is None:
        return 2
    if args.command in bus_cli.BUS_COMMANDS:
        return bus_cli.run(args, terminal, settings)
    if args.command == "node":
        try:
            return _node(args, settings)
        except Exception as exc:  # a command line reports in one line, it does not trace back
            return _failed(terminal, "node", exc)
    try:  # the demo extra: SQLAlchemy for the example plugins, rich for the narrative
        from rich.console import Console

        from plugins.demo.app import run_demo
    except ImportError as exc:  # an extra missing, most likely
        return _failed(terminal, "demo", exc)

    with open(args.log_file, "a", encoding="utf-8") as log_file:
        configure_logging(format="json", level="DEBUG", file=log_file)
        try:
            code = asyncio.run(run_demo(Console(), args.amqp_url, settings, args.log_file))
        except Exception as exc:  # a command line reports in one line, it does not trace back
            code = _failed(terminal, "demo", exc)
    terminal.print(f"structured logs: {args.log_file}")
    return code


def _port(text: str) -> int:
    """argparse type: a TCP port, 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, got {value}")
    return value


def _failed(terminal: Terminal, command: str, exc: Exception) -> int:
    """Print why ``command`` failed (one redacted line); its exit status."""
    extra = _missing_extra(exc)
    if extra is not None:
        line = f"{command} needs the {extra} extra: pip install 'clusterbus[{extra}]'"
        terminal.print(line, style="red")
        return 2
    terminal.print(bus_cli.failure(command, exc), style="red")
    return 2 if isinstance(exc, ValidationError) else 1


def _missing_extra(exc: BaseException) -> str | None:
    """The extra to install when ``exc`` is an optional module's absence, else None."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    return EXTRAS.get(exc.name.partition(".")[0])


def _node(args: argparse.Namespace, settings: Settings) -> int:
    from plugins.demo.node import run_node  # needs the demo extra: imported on use

    with contextlib.ExitStack() as files:
        target = (
            files.enter_context(open(args.log_file, "a", encoding="utf-8"))
            if args.log_file
            else None
        )
        configure_logging(
            format="json" if target else settings.log_format, level=settings.log_level, file=target
        )
        return asyncio.run(
            run_node(
                label=args.label,
                amqp_url=args.amqp_url,
                database_url=args.database_url,
                app_name=args.app,
                settings=settings,
                http_port=args.http_port,
                http_host=args.http_host,
            )
        )


if __name__ == "__main__":
    sys.exit(main())

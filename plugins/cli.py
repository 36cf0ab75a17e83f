"""The ``clusterbus`` console script: the bus's commands plus ``run``, ``demo`` and ``node``.

Only the bus's dependencies are imported here: the runner (:mod:`plugins.runner`) imports
uvicorn only for ``--http-port``, and the demo (:mod:`plugins.demo.app`,
:mod:`plugins.demo.node`) needs the ``demo`` extra (SQLAlchemy, rich) and is imported by its
commands, so ``clusterbus --help``, ``settings``, ``dlq`` and ``run`` work from the wheel
without extras; they print through :class:`bus.terminal.Terminal`, in colour when rich is
installed. ``node`` is ``run`` applied to the demo's app (:func:`plugins.demo.node.node_app`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence
from typing import get_args

from pydantic import ValidationError

from bus import cli as bus_cli
from bus.logs import LogFormat, configure_logging
from bus.settings import Settings
from bus.terminal import Terminal
from plugins import runner
from plugins.app import App
from plugins.demo import APP_NAME

EXTRAS = {
    "sqlalchemy": "demo",
    "aiosqlite": "demo",
    "rich": "demo",
    "uvicorn": "http",
    "psycopg": "postgres",
}
"""The extra that installs each optional module the demo imports."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clusterbus`` console script."""
    root, commands = bus_cli.parser()
    run = commands.add_parser(
        "run",
        help="run an App until SIGTERM/SIGINT, then stop it gracefully",
        description="Run TARGET (module:attribute: an App, or a zero-argument factory, sync "
        "or async, returning one) until SIGTERM or SIGINT, then stop it gracefully; exit "
        "0. A second signal stops at once. Exit 1 when the app fails to start, 2 when "
        "TARGET cannot be used.",
    )
    run.add_argument("target", metavar="TARGET", help="module:attribute, e.g. myapp.main:app")
    run.add_argument(
        "--log-format",
        choices=get_args(LogFormat),
        default=None,
        help="json, console, or auto: console on a terminal (default: the log_format setting)",
    )
    run.add_argument(
        "--log-level",
        type=str.upper,
        choices=runner.LEVELS,
        default=None,
        help="the lowest level logged; DEBUG also shows a failed start's traceback "
        "(default: the log_level setting)",
    )
    _http_options(run, "/health/live, /health/ready and /metrics")
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
        "--control",
        action="store_true",
        help="host the demo's control channel, through which any peer on the broker can add "
        "and remove fields and submit tasks (clusterbus demo asks for it; default: off)",
    )
    _http_options(node, "/health/live, /health/ready and /metrics")
    args = root.parse_args(argv)
    terminal = Terminal()
    settings = bus_cli.load_settings(terminal)
    if settings is None:
        return 2
    if args.command in bus_cli.BUS_COMMANDS:
        return bus_cli.run(args, terminal, settings)
    if args.command == "run":
        return runner.run(
            args.target,
            log_format=args.log_format or settings.log_format,
            log_level=args.log_level or settings.log_level,
            http_port=args.http_port,
            http_host=args.http_host,
            terminal=terminal,
        )
    if args.command == "node":
        try:
            return _node(args, settings, terminal)
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


def _http_options(command: argparse.ArgumentParser, endpoints: str) -> None:
    command.add_argument(
        "--http-port",
        type=_port,
        default=None,
        metavar="PORT",
        help=f"serve {endpoints} on this port (default: no HTTP server; needs uvicorn, "
        "the http extra)",
    )
    command.add_argument(
        "--http-host",
        default="127.0.0.1",
        help="the address --http-port listens on (default: %(default)s; 0.0.0.0 in a container)",
    )


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


def _node(args: argparse.Namespace, settings: Settings, terminal: Terminal) -> int:
    """``clusterbus node``: the runner applied to the demo's app."""
    from plugins.demo.node import node_app  # needs the demo extra: imported on use

    def app() -> App:
        return node_app(
            label=args.label,
            database_url=args.database_url,
            app_name=args.app,
            amqp_url=args.amqp_url,
            settings=settings,
            control=args.control,
        )

    def announce(app: App, port: int | None) -> None:
        """What ``clusterbus demo`` (and a person watching) waits for on standard output."""
        if port is not None:
            where = f"[{args.http_host}]" if ":" in args.http_host else args.http_host
            print(f"health http://{where}:{port}/health/ready", flush=True)
        print(f"ready {app.bus.instance_id}", flush=True)

    with contextlib.ExitStack() as files:
        target = (
            files.enter_context(open(args.log_file, "a", encoding="utf-8"))
            if args.log_file
            else None
        )
        return runner.run(
            app,
            command="node",
            log_format="json" if target else settings.log_format,
            log_level=settings.log_level,
            log_file=target,
            http_port=args.http_port,
            http_host=args.http_host,
            on_ready=announce,
            terminal=terminal,
        )


if __name__ == "__main__":
    sys.exit(main())

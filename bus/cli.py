"""The ``clusterbus`` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from pydantic import ValidationError
from rich.console import Console

from bus import __version__, dlq
from bus.errors import BusError
from bus.logs import configure_logging
from bus.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clusterbus", description="clusterbus: one cluster out of many instances."
    )
    parser.add_argument("--version", action="version", version=f"clusterbus {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="three instances exchanging pub/sub messages")
    demo.add_argument(
        "--amqp-url",
        default=None,
        help="run on RabbitMQ at this URL (default: in memory, no broker)",
    )
    demo.add_argument(
        "--log-file",
        default="clusterbus-demo.log",
        help="where the structured (JSON) logs go (default: %(default)s)",
    )
    commands.add_parser("settings", help="show the effective settings (secrets redacted)")
    dlq.add_parser(commands)
    return parser


def _settings_error(exc: ValidationError) -> str:
    lines = [f"invalid settings ({exc.error_count()} error(s)):"]
    for error in exc.errors(include_url=False):
        name = ".".join(str(part) for part in error["loc"]) or "settings"
        lines.append(f"  {name} (env CLUSTERBUS_{name.upper()}): {error['msg']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clusterbus`` console script."""
    args = _parser().parse_args(argv)
    console = Console()
    try:
        settings = Settings()
    except ValidationError as exc:
        console.print(_settings_error(exc), style="red", markup=False)
        return 2
    if args.command == "settings":
        for name, value in settings.model_dump().items():
            console.print(f"{name} = {value}", markup=False)
        return 0
    if args.command == "dlq":
        configure_logging("WARNING", "console", force=True)
        try:
            return asyncio.run(dlq.run(console, args, settings))
        except BusError as exc:
            console.print(f"dlq failed: {exc}", style="red", markup=False)
            return 1
    from bus.demo import run_demo

    with open(args.log_file, "a", encoding="utf-8") as log_file:
        configure_logging("DEBUG", "json", force=True, file=log_file)
        try:
            code = asyncio.run(run_demo(console, args.amqp_url, settings))
        except BusError as exc:
            console.print(f"demo failed: {exc}", style="red", markup=False)
            code = 1
    console.print(f"structured logs: {args.log_file}")
    return code


if __name__ == "__main__":
    sys.exit(main())

"""The ``clusterbus`` console script: the bus's commands plus ``demo`` and ``node``."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from rich.console import Console

from bus import cli as bus_cli
from bus.errors import BusError
from bus.logs import configure_logging


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
    args = root.parse_args(argv)
    console = Console()
    settings = bus_cli.load_settings(console)
    if settings is None:
        return 2
    if args.command in bus_cli.BUS_COMMANDS:
        return bus_cli.run(args, console, settings)
    from plugins.demo import run_demo

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

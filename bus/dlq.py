"""``clusterbus dlq``: list, replay and purge an event queue's dead letters."""

from __future__ import annotations

import argparse
import re
import time

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bus.facade import Bus
from bus.settings import Settings
from managers.queue_messages import DeadLetter

ACTIONS = ("list", "replay", "purge")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``dlq`` subcommand."""
    dlq = commands.add_parser("dlq", help="list, replay or purge a queue's dead letters")
    dlq.add_argument("action", choices=ACTIONS)
    dlq.add_argument("channel", help="the queue channel (as given to bus.queue.subscribe)")
    dlq.add_argument("--app", required=True, help="the app name the queue belongs to")
    dlq.add_argument("--shared", action="store_true", help="the shared queue queue.<channel>")
    dlq.add_argument(
        "--id",
        dest="ids",
        action="append",
        default=None,
        help="replay only this message id (repeatable; default: all)",
    )
    dlq.add_argument(
        "--amqp-url", default=None, help="RabbitMQ URL (default: CLUSTERBUS_AMQP_URL, or memory)"
    )


def _age(failed_at: float, now: float) -> str:
    if not failed_at:
        return "?"
    seconds = max(0.0, now - failed_at)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def shown(text: object) -> Text:
    """``text`` as plain rich text: never read as markup (``[/]``, ``[bold]`` stay as they
    are); control characters (terminal escapes a peer could forge) and lone surrogates are
    shown as escapes."""
    safe = str(text).encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates
    return Text(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", safe))


def table(channel: str, letters: list[DeadLetter]) -> Table:
    """The rich table of ``letters``: id, attempts, error, age (data never read as markup)."""
    now = time.time()
    view = Table(title=shown(f"dead letters of {channel!r} ({len(letters)})"))
    view.add_column("id", no_wrap=True)
    view.add_column("attempts", justify="right")
    view.add_column("error")
    view.add_column("age", justify="right")
    for letter in letters:
        view.add_row(
            shown(letter.id),
            shown(letter.attempts),
            shown(letter.error),
            shown(_age(letter.failed_at, now)),
        )
    return view


async def run(console: Console, args: argparse.Namespace, settings: Settings) -> int:
    """Carry out ``clusterbus dlq ACTION CHANNEL``; the exit status."""
    async with Bus(args.app, amqp_url=args.amqp_url, settings=settings) as bus:
        queue = bus.queue
        if args.action == "list":
            console.print(
                table(args.channel, await queue.dead_letters(args.channel, shared=args.shared))
            )
        elif args.action == "replay":
            moved = await queue.replay(args.channel, args.ids, shared=args.shared)
            console.print(f"replayed {moved} message(s) to {args.channel!r}", markup=False)
        else:
            purged = await queue.purge_dead(args.channel, shared=args.shared)
            console.print(f"purged {purged} dead letter(s) of {args.channel!r}", markup=False)
    return 0

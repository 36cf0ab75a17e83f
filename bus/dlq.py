"""``clusterbus dlq``: list, replay and purge an event queue's dead letters."""

from __future__ import annotations

import argparse
import re
import time

from bus.facade import Bus
from bus.settings import Settings
from bus.terminal import Terminal
from managers.queue_messages import DeadLetter

ACTIONS = ("list", "replay", "purge")
HEADERS = ["id", "attempts", "error", "age"]
"""The columns of ``clusterbus dlq list``."""


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


def shown(text: object) -> str:
    """``text`` as it may be printed: control characters (terminal escapes a peer could forge)
    and lone surrogates become escapes; the rest, ``[/]`` or ``[bold]`` included, is left as
    it is (the terminal prints it literally, never as markup)."""
    safe = str(text).encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", safe)


def print_table(terminal: Terminal, channel: str, letters: list[DeadLetter]) -> None:
    """Print the table of ``letters``: id, attempts, error, age (data printed literally)."""
    now = time.time()
    rows = [
        [shown(letter.id), shown(letter.attempts), shown(letter.error), _age(letter.failed_at, now)]
        for letter in letters
    ]
    terminal.table(shown(f"dead letters of {channel!r} ({len(letters)})"), HEADERS, rows)


async def run(terminal: Terminal, args: argparse.Namespace, settings: Settings) -> int:
    """Carry out ``clusterbus dlq ACTION CHANNEL``; the exit status."""
    async with Bus(args.app, amqp_url=args.amqp_url, settings=settings) as bus:
        queue = bus.queue
        if args.action == "list":
            letters = await queue.dead_letters(args.channel, shared=args.shared)
            print_table(terminal, args.channel, letters)
        elif args.action == "replay":
            moved = await queue.replay(args.channel, args.ids, shared=args.shared)
            terminal.print(f"replayed {moved} message(s) to {args.channel!r}")
        else:
            purged = await queue.purge_dead(args.channel, shared=args.shared)
            terminal.print(f"purged {purged} dead letter(s) of {args.channel!r}")
    return 0

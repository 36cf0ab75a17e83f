"""``clusterbus dlq``: list, show, replay and purge an event queue's dead letters.

``list`` and ``show`` only read; ``replay`` and ``purge`` change the queue (``purge`` asks
first on a terminal, and needs ``--yes`` elsewhere). In memory mode the commands work on the
file the app's queues were saved to (:mod:`bus.dlq_source`), on the broker on the dead queue.
Exit status: 0 done, 1 not found (app, channel, dead queue, saved file, id) or failed, 2 bad
usage (argparse's own errors, ``purge`` without ``--yes`` off a terminal) or invalid settings.
What is printed is built in :mod:`bus.dlq_output` (wire texts printed literally, escaped).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from bus.dlq_output import (
    letter_json,
    not_shown_line,
    note,
    print_json,
    print_letter,
    print_table,
)
from bus.dlq_source import DeadQueue, NotFound, dead_queue, with_url
from bus.settings import Settings
from bus.terminal import Terminal
from bus.terminal import escaped as shown
from managers.names import validate_app_name

ACTIONS = ("list", "show", "replay", "purge")
DEFAULT_LIMIT = 50
"""How many dead letters ``list`` shows unless told (``--limit 0``: all)."""
NOT_A_TERMINAL = "refusing to purge without --yes (not a terminal)"
YES = ("y", "yes")

__all__ = ["ACTIONS", "DEFAULT_LIMIT", "add_parser", "print_table", "run", "shown"]


def _count(text: str) -> int:
    """``--limit``'s value: an int >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``dlq`` and its actions ``list``, ``show``, ``replay`` and ``purge``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("channel", help="the queue channel (as given to bus.queue.subscribe)")
    common.add_argument("--app", required=True, help="the app name the queue belongs to")
    common.add_argument(
        "--shared", action="store_true", help="the shared queue queue.<channel> (any app's)"
    )
    common.add_argument(
        "--amqp-url",
        default=None,
        help="RabbitMQ URL (default: CLUSTERBUS_AMQP_URL; without one, memory mode: the "
        "queues saved under storage_dir)",
    )
    dlq = commands.add_parser(
        "dlq",
        help="list, show, replay or purge a queue's dead letters",
        description="A queue's dead letters. Exit status: 0 done, 1 not found or failed, "
        "2 bad usage or invalid settings.",
    )
    actions = dlq.add_subparsers(dest="dlq_action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="the dead letters (read only)")
    listing.add_argument("--json", action="store_true", help="a JSON array, nothing else")
    listing.add_argument(
        "--limit",
        type=_count,
        default=DEFAULT_LIMIT,
        metavar="N",
        help="show the N oldest (default: %(default)s; 0: all)",
    )
    show = actions.add_parser(
        "show", parents=[common], help="one dead letter: payload, headers, traceback (read only)"
    )
    show.add_argument("id", help="the message id (as list shows it)")
    show.add_argument("--json", action="store_true", help="a JSON object, nothing else")
    replay = actions.add_parser(
        "replay", parents=[common], help="back to the queue, attempt count reset"
    )
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--id",
        dest="ids",
        action="append",
        metavar="ID",
        help="replay this message id (repeatable); if one is not there, none is replayed",
    )
    which.add_argument("--all", action="store_true", help="replay every dead letter")
    purge = actions.add_parser("purge", parents=[common], help="drop every dead letter")
    purge.add_argument(
        "--yes", action="store_true", help="do not ask (required when stdin is not a terminal)"
    )


async def run(terminal: Terminal, args: argparse.Namespace, settings: Settings) -> int:
    """Carry out ``clusterbus dlq ACTION CHANNEL``; the exit status.

    What is not found prints one line and exits 1; any other failure raises (the caller
    prints it in one redacted line)."""
    app = validate_app_name(args.app)
    queue = dead_queue(with_url(settings, args.amqp_url), app, args.channel, shared=args.shared)
    action = args.dlq_action
    if action == "purge" and not args.yes and not stdin_is_terminal():
        terminal.print(NOT_A_TERMINAL, style="red")
        return 2
    try:
        if action == "list":
            return await _list(terminal, queue, as_json=args.json, limit=args.limit)
        if action == "show":
            return await _show(terminal, queue, args.id, as_json=args.json)
        if action == "replay":
            moved = await queue.replay(None if args.all else list(args.ids))
            terminal.print(shown(f"replayed {moved} message(s) to {queue.channel!r}"))
            return 0
        return await _purge(terminal, queue, ask=not args.yes)
    except NotFound as exc:
        terminal.print(shown(exc), style="red")
        return 1


async def _list(terminal: Terminal, queue: DeadQueue, *, as_json: bool, limit: int) -> int:
    letters = await queue.letters()
    kept = letters if limit == 0 else letters[:limit]
    hidden = len(letters) - len(kept)
    if as_json:
        print_json(terminal, [letter_json(letter) for letter in kept])
        if hidden:
            note(not_shown_line(hidden, limit))
        return 0
    print_table(terminal, queue.channel, kept, total=len(letters))
    if hidden:
        terminal.print(not_shown_line(hidden, limit))
    return 0


async def _show(terminal: Terminal, queue: DeadQueue, message_id: str, *, as_json: bool) -> int:
    found = [letter for letter in await queue.letters() if letter.id == message_id]
    if not found:
        raise queue.unknown_ids([message_id])
    letter = found[0]
    more = (
        f"{len(found)} dead letters have id {message_id!r}: showing the oldest "
        "(list shows them all)"
        if len(found) > 1
        else ""
    )
    if as_json:
        print_json(terminal, letter_json(letter))
        if more:
            note(more)
        return 0
    print_letter(terminal, letter, app=queue.app)
    if more:
        terminal.print(shown(more))
    return 0


async def _purge(terminal: Terminal, queue: DeadQueue, *, ask: bool) -> int:
    if ask:
        count = await queue.count()
        if count == 0:
            terminal.print(shown(f"no dead letters in {queue.channel!r} (app {queue.app!r})"))
            return 0
        question = f"purge {count} dead letter(s) of {queue.channel!r} (app {queue.app!r})?"
        if not await confirm(terminal, shown(f"{question} [y/N]")):
            terminal.print("not purged")
            return 1
    purged = await queue.purge()
    terminal.print(shown(f"purged {purged} dead letter(s) of {queue.channel!r}"))
    return 0


def stdin_is_terminal() -> bool:
    """Whether someone can be asked: stdin is a terminal."""
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):  # closed or detached
        return False


async def confirm(terminal: Terminal, question: str) -> bool:
    """Ask ``question`` on the terminal; True on ``y`` or ``yes`` (any case), else False
    (end of input too). The answer is awaited without blocking the event loop when stdin has
    a descriptor the loop can watch, so that Ctrl-C stops the command at once."""
    out = terminal.file
    out.write(f"{question} ")
    out.flush()
    try:
        await _line_ready()
        answer = sys.stdin.readline()
    except (OSError, ValueError):
        return False
    return answer.strip().lower() in YES


async def _line_ready() -> None:
    """Wait until stdin can be read (at once when it has no descriptor to watch)."""
    try:
        descriptor = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    try:
        loop.add_reader(descriptor, ready.set)
    except (NotImplementedError, OSError, ValueError):  # a loop that cannot watch it
        return
    try:
        await ready.wait()
    finally:
        loop.remove_reader(descriptor)

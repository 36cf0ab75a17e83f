"""``clusterbus dlq list|show|replay|purge`` on the broker: the dead queue is looked up first
(an unknown app or channel exits 1 naming it), reading leaves every dead letter in place and
in order, an unknown id replays nothing, ``purge`` needs ``--yes`` off a terminal, and wire
texts print literally with their escapes escaped."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import aio_pika
import aiormq
import pytest

from bus import Bus
from bus.logs import configure_logging
from managers.queue import QueueContext
from plugins.cli import main
from tests.conftest import fast_settings, unique_app
from tests.shared.test_queue import wait_dead

pytestmark = pytest.mark.amqp

MARKUP_ERROR = "[bold]not bold[/bold] [/] \x1b[31mred\x1b[0m"


class FakeTerminal(io.StringIO):
    """A stdin that is a terminal, holding the answer typed."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in [n for n in os.environ if n.startswith("CLUSTERBUS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("COLUMNS", "300")
    yield
    configure_logging(format="console", level="WARNING")


async def _park(
    app: str, url: str, count: int, *, channel: str = "jobs", shared: bool = False
) -> list[str]:
    """Park ``count`` messages of ``channel`` in its dead queue on the broker (a handler that
    raises, ``max_retries=0``); their ids, oldest first."""
    async with Bus(app, amqp_url=url, settings=fast_settings()) as bus:

        async def fail(message: Any, ctx: QueueContext) -> None:
            raise ValueError(f"cannot do {message['n']} {MARKUP_ERROR}")

        await bus.queue.subscribe(channel, fail, shared=shared)
        ids = []
        for n in range(count):  # one at a time: the dead queue's order is the ids' order
            ids.append(await bus.queue.publish(channel, {"n": n}, max_retries=0, shared=shared))
            await wait_dead(bus, channel, n + 1, shared=shared)
        await bus.queue.unsubscribe(channel, shared=shared)
    return ids


async def _dead_ids(
    app: str, url: str, *, channel: str = "jobs", shared: bool = False
) -> list[str]:
    async with Bus(app, amqp_url=url, settings=fast_settings()) as bus:
        return [letter.id for letter in await bus.queue.dead_letters(channel, shared=shared)]


@pytest.fixture
def parked(amqp_url: str) -> tuple[str, list[str]]:
    """An app with three dead letters of channel ``jobs`` on the broker."""
    app = unique_app()
    return app, asyncio.run(_park(app, amqp_url, 3))


def _dlq(amqp_url: str, action: str, *argv: str) -> int:
    return main(["dlq", action, *argv, "--amqp-url", amqp_url])


def test_list_as_a_table_and_as_json(
    parked: tuple[str, list[str]], amqp_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app, ids = parked
    assert _dlq(amqp_url, "list", "jobs", "--app", app) == 0
    out = capsys.readouterr().out
    assert "dead letters of 'jobs' (3)" in out
    for message_id in ids:
        assert message_id in out
    assert "ValueError: cannot do 1 [bold]not bold[/bold] [/] \\x1b[31mred\\x1b[0m" in out
    assert "\x1b" not in out

    assert _dlq(amqp_url, "list", "jobs", "--app", app, "--json", "--limit", "2") == 0
    captured = capsys.readouterr()
    letters = json.loads(captured.out)
    assert [letter["id"] for letter in letters] == ids[:2]
    assert letters[1]["message"] == {"n": 1}
    assert letters[1]["error"] == f"ValueError: cannot do 1 {MARKUP_ERROR}"  # exact, in JSON
    assert letters[1]["error_type"] == "ValueError" and letters[1]["attempts"] == 1
    assert "1 more dead letter(s) not shown" in captured.err
    assert asyncio.run(_dead_ids(app, amqp_url)) == ids  # read, not taken: in place, in order


def test_show_prints_payload_and_traceback(
    parked: tuple[str, list[str]], amqp_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app, ids = parked
    assert _dlq(amqp_url, "show", "jobs", ids[2], "--app", app) == 0
    out = capsys.readouterr().out
    payload, rest = out.split("payload:\n", 1)[1].split("headers:\n", 1)
    headers, traceback = rest.split("traceback:\n", 1)
    assert json.loads(payload) == {"n": 2}
    assert f"id:          {ids[2]}" in headers and "error_type:  ValueError" in headers
    assert "Traceback (most recent call last)" in traceback
    assert "ValueError: cannot do 2 [bold]not bold[/bold] [/] \\x1b[31mred" in traceback
    assert "\x1b" not in out

    assert _dlq(amqp_url, "show", "jobs", ids[0], "--app", app, "--json") == 0
    letter = json.loads(capsys.readouterr().out)
    assert letter["id"] == ids[0] and letter["message"] == {"n": 0}
    assert "Traceback (most recent call last)" in letter["traceback"]
    assert _dlq(amqp_url, "show", "jobs", "nonexistent", "--app", app) == 1
    assert "no dead letter with id 'nonexistent'" in capsys.readouterr().out
    assert asyncio.run(_dead_ids(app, amqp_url)) == ids


def test_replay_an_unknown_id_replays_nothing_then_all(
    parked: tuple[str, list[str]], amqp_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app, ids = parked
    assert _dlq(amqp_url, "replay", "jobs", "--app", app, "--id", "nonexistent") == 1
    out = capsys.readouterr().out.strip()
    assert out == (
        f"no dead letter with id 'nonexistent' in channel 'jobs' (app '{app}'): "
        "nothing was replayed"
    )
    assert _dlq(amqp_url, "replay", "jobs", "--app", app, "--id", ids[0], "--id", "x") == 1
    assert "'x'" in capsys.readouterr().out
    assert asyncio.run(_dead_ids(app, amqp_url)) == ids

    assert _dlq(amqp_url, "replay", "jobs", "--app", app, "--id", ids[1]) == 0
    assert "replayed 1 message(s) to 'jobs'" in capsys.readouterr().out
    assert _dlq(amqp_url, "replay", "jobs", "--app", app, "--all") == 0
    assert "replayed 2 message(s) to 'jobs'" in capsys.readouterr().out
    assert asyncio.run(_dead_ids(app, amqp_url)) == []


def test_purge_needs_yes_off_a_terminal(
    parked: tuple[str, list[str]], amqp_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app, ids = parked
    assert _dlq(amqp_url, "purge", "jobs", "--app", app) == 2
    assert capsys.readouterr().out.strip() == "refusing to purge without --yes (not a terminal)"
    assert asyncio.run(_dead_ids(app, amqp_url)) == ids
    assert _dlq(amqp_url, "purge", "jobs", "--app", app, "--yes") == 0
    assert "purged 3 dead letter(s) of 'jobs'" in capsys.readouterr().out
    assert asyncio.run(_dead_ids(app, amqp_url)) == []
    assert _dlq(amqp_url, "list", "jobs", "--app", app) == 0  # the dead queue stays
    assert "dead letters of 'jobs' (0)" in capsys.readouterr().out


def test_purge_on_a_terminal_asks(
    parked: tuple[str, list[str]],
    amqp_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    app, ids = parked
    monkeypatch.setattr(sys, "stdin", FakeTerminal("n\n"))
    assert _dlq(amqp_url, "purge", "jobs", "--app", app) == 1
    out = capsys.readouterr().out
    assert out == f"purge 3 dead letter(s) of 'jobs' (app '{app}')? [y/N] not purged\n"
    assert asyncio.run(_dead_ids(app, amqp_url)) == ids
    monkeypatch.setattr(sys, "stdin", FakeTerminal("y\n"))
    assert _dlq(amqp_url, "purge", "jobs", "--app", app) == 0
    assert "purged 3 dead letter(s)" in capsys.readouterr().out
    assert asyncio.run(_dead_ids(app, amqp_url)) == []


def test_an_unknown_app_or_channel_exits_1(
    parked: tuple[str, list[str]], amqp_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app, ids = parked
    unknown_app = unique_app()
    cases = [
        (["list", "jobs", "--app", unknown_app], f"{unknown_app}.queue.jobs.dead"),
        (["list", "other", "--app", app], f"{app}.queue.other.dead"),
        (["show", "other", ids[0], "--app", app], f"{app}.queue.other.dead"),
        (["replay", "other", "--app", app, "--all"], f"{app}.queue.other.dead"),
        (["purge", "other", "--app", app, "--yes"], f"{app}.queue.other.dead"),
        (["list", f"{app}-none", "--app", app, "--shared"], f"queue.{app}-none.dead"),
    ]
    for argv, name in cases:
        assert _dlq(amqp_url, *argv) == 1, argv
        assert capsys.readouterr().out.strip() == (
            f"no dead queue '{name}' on the broker: unknown app or channel (or nothing was "
            "ever dead-lettered there)"
        )
    assert asyncio.run(_dead_ids(app, amqp_url)) == ids
    # looking did not declare anything of the unknown app (no queue, no exchange)
    for kind, name in [
        ("queue", f"{unknown_app}.queue.jobs.dead"),
        ("queue", f"{unknown_app}.queue.jobs"),
        ("exchange", f"{unknown_app}.pubsub.cache.invalidate"),
        ("queue", f"{app}.queue.other"),
    ]:
        assert not asyncio.run(_exists(amqp_url, kind, name)), name
    assert asyncio.run(_exists(amqp_url, "queue", f"{app}.queue.jobs.dead"))


async def _exists(url: str, kind: str, name: str) -> bool:
    """Whether the broker has queue or exchange ``name`` (a passive declare)."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        try:
            if kind == "queue":
                await channel.declare_queue(name, passive=True)
            else:
                await channel.declare_exchange(name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
        return True


def test_a_shared_dead_queue(amqp_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    app = unique_app()
    channel = f"{app}-jobs"  # queue.<app>-jobs: the session's clean-up deletes it
    ids = asyncio.run(_park(app, amqp_url, 2, channel=channel, shared=True))
    assert _dlq(amqp_url, "list", channel, "--app", app, "--shared", "--json") == 0
    assert [letter["id"] for letter in json.loads(capsys.readouterr().out)] == ids
    assert _dlq(amqp_url, "list", channel, "--app", app) == 1  # not the app's own queue
    assert f"no dead queue '{app}.queue.{channel}.dead'" in capsys.readouterr().out
    assert _dlq(amqp_url, "purge", channel, "--app", app, "--shared", "--yes") == 0
    assert "purged 2 dead letter(s)" in capsys.readouterr().out
    assert asyncio.run(_dead_ids(app, amqp_url, channel=channel, shared=True)) == []

"""The failover connection cycles through the URLs, one per connection attempt.

It hooks a private step of aio-pika (pinned ``>=10.2,<11``): these tests fail loudly if an
upgrade removes or renames it."""

from __future__ import annotations

import random

import aio_pika
import pytest
from aio_pika.connection import Connection
from yarl import URL

from bus.amqp.failover import FailoverConnection, url_order

URLS = [URL(f"amqp://u:secret@node{n}:5672/") for n in (1, 2, 3)]


async def test_aio_pika_still_has_the_hooked_step() -> None:
    hooked = "_RobustConnection__connect_transport"
    assert callable(getattr(aio_pika.RobustConnection, hooked, None))
    connection = aio_pika.RobustConnection(URLS[0])
    assert hasattr(connection, "_RobustConnection__connect_timeout")


async def test_each_attempt_takes_the_next_url(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[tuple[str | None, object]] = []

    async def refused(self: Connection, timeout: object = None) -> None:
        attempts.append((self.url.host, timeout))
        raise ConnectionRefusedError("refused")

    monkeypatch.setattr(Connection, "connect", refused)
    connection = FailoverConnection(URLS, first=1)
    connection.attempt_timeout = 7.0
    for _ in range(4):
        with pytest.raises(ConnectionRefusedError):
            await connection._RobustConnection__connect_transport()
    assert attempts == [("node2", 7.0), ("node3", 7.0), ("node1", 7.0), ("node2", 7.0)]


async def test_a_connection_shows_without_its_password() -> None:
    connection = FailoverConnection(URLS)
    assert "secret" not in str(connection) and "secret" not in repr(connection)
    assert "node1" in str(connection)


def test_in_order_keeps_the_order_and_shuffle_spreads() -> None:
    assert url_order(URLS, "in_order") == URLS
    firsts = {url_order(URLS, "shuffle", random.Random(seed))[0] for seed in range(50)}
    assert firsts == set(URLS)
    assert sorted(map(str, url_order(URLS, "shuffle"))) == sorted(map(str, URLS))


def test_no_urls_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one URL"):
        FailoverConnection([])

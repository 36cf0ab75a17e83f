"""A robust connection over the nodes of a RabbitMQ cluster: every connection attempt (the
first one and each reconnect after a loss) goes to the next URL of the list, in a cycle.

aio-pika's :class:`~aio_pika.RobustConnection` reconnects to its one URL, re-opens its
channels and restores what they declared and consumed. This subclass changes only which URL
each attempt uses, so an instance whose node died reconnects through another node and its
robust channels re-declare their exchanges and queues and resume consuming there.

It hooks the one step aio-pika 10.2 runs per connection attempt (``__connect_transport``, a
private method: the dependency is pinned to ``aio-pika>=10.2,<11`` and a unit test fails if
the hook disappears).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from typing import Any, Literal

import aio_pika
from yarl import URL

from bus.settings import redact_url

_HOOK = "_RobustConnection__connect_transport"  # aio-pika's per-attempt step (name-mangled)
_TIMEOUT = "_RobustConnection__connect_timeout"  # the bound of each attempt


def url_order(
    urls: Sequence[URL], failover: Literal["shuffle", "in_order"], rng: random.Random | None = None
) -> list[URL]:
    """The order in which an instance tries ``urls``: as given, or shuffled (so instances
    spread over the nodes rather than all piling onto the first)."""
    ordered = list(urls)
    if failover == "shuffle":
        (rng or random.Random()).shuffle(ordered)
    return ordered


class FailoverConnection(aio_pika.RobustConnection):
    """A :class:`~aio_pika.RobustConnection` whose attempts cycle through ``urls``, starting
    at ``urls[first]``; after a loss the next attempt goes to the URL after the lost one."""

    def __init__(self, urls: Sequence[URL], *, first: int = 0, **kwargs: Any) -> None:
        if not urls:
            raise ValueError("FailoverConnection needs at least one URL")
        self._urls = list(urls)
        self._next = first % len(self._urls)
        self.attempt_timeout: float | None = None  # bound of each later attempt (None: none)
        self.failed_attempts = 0
        """Attempts that failed since the connection was last up (the outage's so far)."""
        self.lost_at: float | None = None
        """``time.monotonic()`` when the connection was lost (None while it is up)."""
        super().__init__(self._urls[self._next], **kwargs)

    def outage_over(self) -> tuple[int, float]:
        """Mark the connection up again: the outage's failed attempts and its length (s)."""
        attempts, lost_at = self.failed_attempts, self.lost_at
        self.failed_attempts, self.lost_at = 0, None
        return attempts, 0.0 if lost_at is None else time.monotonic() - lost_at

    def __str__(self) -> str:  # aio-pika logs connections by str(): never the password
        return redact_url(str(self.url))

    async def _RobustConnection__connect_transport(self) -> None:
        self.url = self._urls[self._next]
        self._next = (self._next + 1) % len(self._urls)
        if self.attempt_timeout is not None:
            setattr(self, _TIMEOUT, self.attempt_timeout)
        try:
            await getattr(super(), _HOOK)()
        except BaseException:
            self.failed_attempts += 1
            raise


class _OnePerOutage(logging.Filter):
    """Lets through aio-pika's "Connection attempt ... failed" warning once per outage of a
    :class:`FailoverConnection` (its first failed attempt); the transport logs a summary when
    the connection is back. Records about other connections pass untouched."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (
            isinstance(args, tuple)
            and args
            and isinstance(args[0], FailoverConnection)
            and str(record.msg).startswith("Connection attempt to")
        ):
            return args[0].failed_attempts <= 1
        return True


def quiet_repeated_attempts() -> None:
    """Install :class:`_OnePerOutage` on aio-pika's reconnect logger (once per process)."""
    logger = logging.getLogger("aio_pika.robust_connection")
    if not any(isinstance(f, _OnePerOutage) for f in logger.filters):
        logger.addFilter(_OnePerOutage())

"""The arguments clusterbus declares its queues with, by queue type and broker version.

Queue arguments are a contract: RabbitMQ refuses to redeclare a queue with other ones, so
they depend only on the settings and on the broker's version, never on timing.

What differs between RabbitMQ versions (checked against 3.10.8 here, documented for 4.x):

- **Delivery limit of quorum queues.** RabbitMQ 4.0 gives every quorum queue a delivery
  limit of 20 by default: a message returned 20 times (a lock token handed on by 20 crashed
  holders) is dropped. ``x-delivery-limit: -1`` means "unlimited" there. On 3.x the default is
  already unlimited and ``-1`` means "drop at the first return" (seen on 3.10.8): it is sent
  to 4.0 and later only.
- **Leader locator.** ``x-queue-leader-locator`` (``balanced`` spreads the leaders of new
  quorum queues over the nodes) exists from 3.10 and only for quorum queues there.
- **Quorum queues with message TTL and at-least-once dead-lettering** (what delay tiers need)
  exist from 3.10: an older broker with ``queue_type="quorum"`` is refused at start.
"""

from __future__ import annotations

import re
from typing import Any

from bus.settings import Settings
from managers.errors import BusError

LOCK_EXPIRES_MS = 60_000
"""An idle key's lock queue (no consumer) is deleted after this long. Quorum queues support
``x-expires`` only in part (a redeclare does not restart the countdown): a waiter whose
consume finds the queue gone declares it again (see :mod:`bus.amqp.locks`)."""

QUORUM_SINCE = (3, 10)
UNLIMITED_DELIVERY_SINCE = (4, 0)

Version = tuple[int, int, int]


def parse_version(text: object) -> Version:
    """``"3.10.8"`` -> ``(3, 10, 8)``; anything unreadable is taken as ``(0, 0, 0)``."""
    numbers = re.findall(r"\d+", text.decode() if isinstance(text, bytes) else str(text))[:3]
    major, minor, patch = (int(n) for n in [*numbers, "0", "0", "0"][:3])
    return major, minor, patch


def check_broker(settings: Settings, version: Version) -> None:
    """Refuse, at start, settings the connected broker cannot honour (a clear
    :class:`BusError` instead of failures at the first declare)."""
    wanted = {
        name
        for name, kind in (
            ("queue_type", settings.queue_type),
            ("lock_queue_type", settings.lock_queue_type),
        )
        if kind == "quorum"
    }
    if wanted and version[:2] < QUORUM_SINCE:
        raise BusError(
            f"{' and '.join(sorted(wanted))} is 'quorum', which needs RabbitMQ "
            f"{'.'.join(map(str, QUORUM_SINCE))} or later (message TTL and at-least-once "
            f"dead-lettering on quorum queues); the broker is {'.'.join(map(str, version))}. "
            "Use 'classic' or upgrade RabbitMQ."
        )


class QueueArguments:
    """The arguments of event queues, delay tiers, dead queues and lock queues."""

    def __init__(self, settings: Settings, version: Version) -> None:
        self._settings = settings
        self._version = version
        self.quorum_locks = settings.lock_queue_type == "quorum"
        self._lock = self._lock_arguments()  # every claim declares with these: made once

    def _quorum(self) -> dict[str, Any]:
        arguments: dict[str, Any] = {"x-queue-type": "quorum"}
        if self._settings.queue_leader_locator != "none":
            arguments["x-queue-leader-locator"] = self._settings.queue_leader_locator
        if self._version[:2] >= UNLIMITED_DELIVERY_SINCE:
            arguments["x-delivery-limit"] = -1
        return arguments

    def event(self, *, tier_of: str | None = None, ttl: float = 0) -> dict[str, Any]:
        """A work queue, or (``tier_of``) the delay tier holding messages ``ttl`` seconds
        before dead-lettering them back into queue ``tier_of``, or a dead queue."""
        quorum = self._settings.queue_type == "quorum"
        arguments: dict[str, Any] = self._quorum() if quorum else {"x-queue-type": "classic"}
        if tier_of is not None:
            arguments["x-message-ttl"] = round(ttl * 1000)
            arguments["x-dead-letter-exchange"] = ""
            arguments["x-dead-letter-routing-key"] = tier_of
            if quorum:  # dead-lettering that cannot lose a message
                arguments["x-dead-letter-strategy"] = "at-least-once"
                arguments["x-overflow"] = "reject-publish"
        return arguments

    def lock(self) -> dict[str, Any]:
        """A lock queue: single active consumer, deleted after :data:`LOCK_EXPIRES_MS`
        without a consumer; quorum ones never drop a token for its delivery count (the same
        dict every time: never change it)."""
        return self._lock

    def _lock_arguments(self) -> dict[str, Any]:
        quorum = self.quorum_locks
        arguments: dict[str, Any] = self._quorum() if quorum else {"x-queue-type": "classic"}
        arguments["x-single-active-consumer"] = True
        arguments["x-expires"] = LOCK_EXPIRES_MS
        return arguments

"""Ids of messages an instance completed recently, to drop a redelivered duplicate.

An application that retries a publish with its own ``message_id`` (the first attempt raised,
but may have been enqueued) can leave two copies of one message in the queue; a broker that
lost an ack (a node died between the handler's success and the ack) redelivers one. A
subscription made with ``dedupe=<seconds>`` remembers the ids it completed for that long and
acks a later copy without running the handler. The window is this instance's memory only: a
copy taken by another instance, or one that arrives while the first copy still runs, runs.
"""

from __future__ import annotations

import time
from collections import OrderedDict

MAX_REMEMBERED = 100_000
"""Most ids one subscription remembers; the oldest are forgotten first."""


class CompletedIds:
    """Message ids completed within the last ``window`` seconds (at most ``limit``)."""

    def __init__(self, window: float, limit: int = MAX_REMEMBERED) -> None:
        self.window = window
        self._limit = limit
        self._expiry: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def add(self, message_id: str) -> None:
        """Remember that ``message_id`` completed now."""
        now = time.monotonic()
        self._expiry.pop(message_id, None)
        self._expiry[message_id] = now + self.window
        while self._expiry:  # oldest first: drop what expired, and the excess
            oldest, expiry = next(iter(self._expiry.items()))
            if expiry > now and len(self._expiry) <= self._limit:
                break
            del self._expiry[oldest]

    def __contains__(self, message_id: object) -> bool:
        expiry = self._expiry.get(message_id) if isinstance(message_id, str) else None
        return expiry is not None and expiry > time.monotonic()

"""What an event-queue message carries besides its payload: header names, the handler's
context, dead letters, and the backoff and delay-tier arithmetic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from managers.envelope import Envelope

HEADER_ATTEMPT = "x-attempt"
HEADER_MAX_RETRIES = "x-max-retries"
HEADER_TIMEOUT = "x-timeout"
HEADER_NOT_BEFORE = "x-not-before"
HEADER_ERROR = "x-error"
HEADER_ATTEMPTS = "x-attempts"
HEADER_FAILED_BY = "x-failed-by"
HEADER_FAILED_AT = "x-failed-at"

# Times in headers are integer milliseconds (x-timeout: a duration; x-not-before, x-failed-at:
# epoch times): AMQP tables carry Python floats as 32-bit floats, which cannot hold an epoch
# time to the second.

# Headers RabbitMQ adds when it dead-letters (delay tiers); they are dropped when a message is
# forwarded again so that they do not pile up.
_BROKER_HEADERS = ("x-death", "x-first-death-", "x-last-death-")
_FAILURE_HEADERS = (HEADER_ERROR, HEADER_ATTEMPTS, HEADER_FAILED_BY, HEADER_FAILED_AT)

# A message whose not-before time is less than this many seconds away is due.
DUE_SLACK = 0.02
# Error texts kept in dead-letter headers are cut to this many characters.
MAX_ERROR_CHARS = 2000


@dataclass(slots=True)
class QueueContext:
    """What ``process(message, ctx)`` learns about the delivery it handles."""

    id: str
    """The message id ``publish`` returned; the same on every attempt."""
    channel: str
    attempt: int
    """0 on the first attempt."""
    max_retries: int
    timeout: float
    deadline: float
    """Loop time (``asyncio.get_running_loop().time()``) when this attempt is cancelled."""
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the timeout fires or the instance stops (then the handler is cancelled)."""
    redelivered: bool = False
    """True when the broker delivers this attempt again (after a crash or a lost connection)."""
    trace_id: str = ""


@dataclass(slots=True, frozen=True)
class DeadLetter:
    """A message parked in the dead queue after its last attempt (or undecodable)."""

    id: str
    message: object
    """The decoded payload, or the raw body bytes when it cannot be decoded."""
    error: str
    attempts: int
    """Attempts made (``max_retries + 1`` when retries ran out)."""
    failed_by: str
    """Instance id of the consumer that parked it."""
    failed_at: float
    """Wall-clock time (epoch seconds) when it was parked."""
    trace_id: str
    channel: str


@dataclass(slots=True, frozen=True)
class QueueHeaders:
    """The delivery facts kept in a queue message's headers (never in process memory)."""

    attempt: int
    max_retries: int
    timeout: float
    not_before: float | None

    @classmethod
    def read(cls, headers: Mapping[str, Any], default_timeout: float) -> QueueHeaders:
        """Read the headers; absent or malformed ones take their defaults."""
        return cls(
            attempt=max(0, int(_number(headers.get(HEADER_ATTEMPT), 0) or 0)),
            max_retries=max(0, int(_number(headers.get(HEADER_MAX_RETRIES), 0) or 0)),
            timeout=from_ms(headers.get(HEADER_TIMEOUT)) or default_timeout,
            not_before=from_ms(headers.get(HEADER_NOT_BEFORE)),
        )


def to_ms(seconds: float) -> int:
    """Seconds as the integer milliseconds headers carry."""
    return round(seconds * 1000)


def from_ms(value: object) -> float | None:
    """Header milliseconds as seconds (None when absent or not a number)."""
    number = _number(value, None)
    return None if number is None else number / 1000


def _number(value: object, default: float | None) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return float(value)


def initial_headers(
    *, max_retries: int, timeout: float, not_before: float | None
) -> dict[str, Any]:
    """Headers of a freshly published message."""
    headers: dict[str, Any] = {
        HEADER_ATTEMPT: 0,
        HEADER_MAX_RETRIES: max_retries,
        HEADER_TIMEOUT: to_ms(timeout),
    }
    if not_before is not None:
        headers[HEADER_NOT_BEFORE] = to_ms(not_before)
    return headers


def forwarded(envelope: Envelope, **changes: Any) -> Envelope:
    """``envelope`` with broker-added headers dropped and ``changes`` applied (None removes)."""
    headers = {
        k: v
        for k, v in envelope.headers.items()
        if not k.startswith(_BROKER_HEADERS) and k not in changes
    }
    headers.update({k: v for k, v in changes.items() if v is not None})
    return replace(envelope, headers=headers)


def for_replay(envelope: Envelope) -> Envelope:
    """A dead letter made ready to run again: attempt 0, failure headers dropped."""
    changes: dict[str, Any] = dict.fromkeys(_FAILURE_HEADERS)
    changes[HEADER_NOT_BEFORE] = None
    changes[HEADER_ATTEMPT] = 0
    return forwarded(envelope, **changes)


def parked(envelope: Envelope, *, error: str, attempts: int, instance: str) -> Envelope:
    """``envelope`` as it goes to the dead queue, with why, how often and by whom."""
    return forwarded(
        envelope,
        **{
            HEADER_ERROR: error[:MAX_ERROR_CHARS],
            HEADER_ATTEMPTS: attempts,
            HEADER_FAILED_BY: instance,
            HEADER_FAILED_AT: to_ms(time.time()),
            HEADER_NOT_BEFORE: None,
        },
    )


class DelayTiers:
    """The fixed delays of the delay queues: ``retry_delay`` doubling up to ``retry_delay_max``.

    Retry backoffs are tiers; any other delay is made of hops through tiers (largest tier that
    fits first), each hop ending in the work queue where a not-yet-due message is sent on to
    the next hop. A delay is therefore a minimum, late by at most the smallest tier.
    """

    def __init__(self, first: float, cap: float) -> None:
        tiers: list[float] = []
        value = first
        while value < cap:
            tiers.append(round(value, 3))
            value *= 2
        tiers.append(round(cap, 3))
        self.tiers: tuple[float, ...] = tuple(tiers)
        self.first = first
        self.cap = cap

    def backoff(self, attempt: int) -> float:
        """Delay before the retry that follows failed attempt ``attempt`` (0-based)."""
        return self.tiers[min(attempt, len(self.tiers) - 1)]

    def hop(self, remaining: float) -> float:
        """The tier for the next hop of a delay with ``remaining`` seconds to go."""
        fitting = [t for t in self.tiers if t <= remaining]
        return fitting[-1] if fitting else self.tiers[0]

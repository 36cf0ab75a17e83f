"""What an event-queue message carries besides its payload: header names, the handler's
context, dead letters, and the backoff and delay-tier arithmetic."""

from __future__ import annotations

import asyncio
import math
import reprlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from managers.envelope import Envelope
from managers.names import MAX_DELAY

HEADER_ATTEMPT = "x-attempt"
HEADER_MAX_RETRIES = "x-max-retries"
HEADER_TIMEOUT = "x-timeout"
HEADER_NOT_BEFORE = "x-not-before"
HEADER_ERROR = "x-error"
HEADER_ATTEMPTS = "x-attempts"
HEADER_FAILED_BY = "x-failed-by"
HEADER_FAILED_AT = "x-failed-at"
HEADER_ERROR_TYPE = "x-error-type"
HEADER_TRACEBACK = "x-traceback"

# Times in headers are integer milliseconds (x-timeout: a duration; x-not-before, x-failed-at:
# epoch times): AMQP tables carry Python floats as 32-bit floats, which cannot hold an epoch
# time to the second.

# Headers RabbitMQ adds when it dead-letters (delay tiers); they are dropped when a message is
# forwarded again so that they do not pile up.
_BROKER_HEADERS = ("x-death", "x-first-death-", "x-last-death-")
_FAILURE_HEADERS = (
    HEADER_ERROR,
    HEADER_ATTEMPTS,
    HEADER_FAILED_BY,
    HEADER_FAILED_AT,
    HEADER_ERROR_TYPE,
    HEADER_TRACEBACK,
)

# A message whose not-before time is less than this many seconds away is due.
DUE_SLACK = 0.02
# Error texts kept in dead-letter headers are cut to this many characters, and to
# MAX_ERROR_BYTES of UTF-8 (a header must fit a frame, whatever the characters).
MAX_ERROR_CHARS = 2000
MAX_ERROR_BYTES = 4096
MAX_TRACEBACK_BYTES = 16 * 1024
"""A dead letter's traceback is cut to this many bytes of UTF-8 (its last lines kept)."""


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
    error_type: str = ""
    """The exception's type name (``TimeoutError`` for a timed-out attempt; empty for a
    message parked unrun: undecodable, or malformed headers)."""
    traceback: str = ""
    """The handler's traceback as text (no local variables, URL passwords hidden), at most
    16 KiB: its last lines when longer."""


# Header values are read defensively: any peer on the broker (or a caller in memory mode) can
# forge them, and a NaN or infinite timeout would corrupt the event loop's timer heap. A
# header that is present but not usable makes the message malformed (the worker parks it).
MAX_HEADER_COUNT = 10_000
"""Largest ``x-attempt`` and ``x-max-retries`` accepted (``managers.queue.MAX_RETRIES``)."""
MAX_HEADER_TIMEOUT = 24 * 3600.0
"""Default ceiling of ``x-timeout`` as read (seconds). Publishing refuses timeouts above
``consumer_timeout``; a reader that knows it passes it as ``max_timeout``."""
MIN_HEADER_TIMEOUT = 0.001
"""Floor of ``x-timeout`` as read (seconds): the headers' resolution."""
CLOCK_SLACK = 24 * 3600.0
"""How much later than ours a publishing host's clock may be (seconds)."""
MAX_HEADER_DELAY = MAX_DELAY + CLOCK_SLACK
"""How far ahead ``x-not-before`` may be, as read: ``managers.names.MAX_DELAY`` plus
:data:`CLOCK_SLACK`."""

# Ints beyond this magnitude are clamped to it before becoming floats (10**400 has no float).
_HUGE = 2**63
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother = 2, 40, 40
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = 4


@dataclass(slots=True, frozen=True)
class QueueHeaders:
    """The delivery facts kept in a queue message's headers (never in process memory)."""

    attempt: int
    max_retries: int
    timeout: float
    not_before: float | None
    malformed: tuple[str, ...] = ()
    """Names of the headers that were present but not usable (not a finite number, or out
    of bounds): their value above is the default. Such a message is parked, not run."""
    reason: str = ""
    """Why: each malformed header with its value and what it should be ("" when none)."""

    @classmethod
    def read(
        cls,
        headers: Mapping[str, Any],
        default_timeout: float,
        *,
        max_timeout: float = MAX_HEADER_TIMEOUT,
        default_max_retries: int = 0,
    ) -> QueueHeaders:
        """Read the headers; never raises, whatever a peer forged.

        Only finite int and float values are numbers (bools, strings, NaN, infinities and
        None are not). An *absent* header takes its default (a message from a plain producer,
        or one published without its own values, is fine): ``attempt`` 0, ``max_retries``
        ``default_max_retries``, ``timeout`` ``default_timeout`` (at most
        ``max_timeout``), ``not_before`` None. A header that is *present* but not a number in
        its bounds (``attempt`` and ``max_retries`` from 0 to ``MAX_HEADER_COUNT``,
        ``timeout`` from ``MIN_HEADER_TIMEOUT`` to ``max_timeout`` seconds, ``not_before`` at
        most ``MAX_HEADER_DELAY`` seconds from now) takes its default too, and is named in
        ``malformed`` and ``reason``.
        """
        problems: list[tuple[str, str]] = []

        def read_number(
            name: str, low: float, high: float, unit: str, scale: float = 1.0
        ) -> float | None:
            if name not in headers:
                return None
            raw = headers[name]
            value = _number(raw, None)
            if value is not None and low <= value / scale <= high:
                return value / scale
            problems.append((name, f"{name}={_shown(raw)} (expected {unit})"))
            return None

        ceiling = max_timeout if _finite_positive(max_timeout) else MAX_HEADER_TIMEOUT
        default = min(default_timeout, ceiling) if _finite_positive(default_timeout) else ceiling
        count = f"a number from 0 to {MAX_HEADER_COUNT}"
        attempt = read_number(HEADER_ATTEMPT, 0, MAX_HEADER_COUNT, count)
        max_retries = read_number(HEADER_MAX_RETRIES, 0, MAX_HEADER_COUNT, count)
        timeout = read_number(
            HEADER_TIMEOUT,
            MIN_HEADER_TIMEOUT,
            ceiling,
            f"milliseconds from {to_ms(MIN_HEADER_TIMEOUT)} to {to_ms(ceiling)}",
            1000,
        )
        not_before = read_number(
            HEADER_NOT_BEFORE,
            -math.inf,
            time.time() + MAX_HEADER_DELAY,
            f"epoch milliseconds at most {MAX_HEADER_DELAY:g}s from now",
            1000,
        )
        return cls(
            attempt=int(attempt or 0),
            max_retries=int(default_max_retries if max_retries is None else max_retries),
            timeout=float(timeout if timeout is not None else default),
            not_before=not_before,
            malformed=tuple(name for name, _ in problems),
            reason="; ".join(text for _, text in problems),
        )


def _shown(value: object) -> str:
    """A short repr of a header value for a reason text (never raises)."""
    try:
        return _SHOWN.repr(value)
    except Exception:
        return f"<{type(value).__name__}>"


def to_ms(seconds: float) -> int:
    """Seconds as the integer milliseconds headers carry."""
    return round(seconds * 1000)


def from_ms(value: object) -> float | None:
    """Header milliseconds as seconds: a finite float, or None when absent or not a finite
    number (see :func:`_number`)."""
    number = _number(value, None)
    return None if number is None else number / 1000


def _finite_positive(value: float) -> bool:
    return isinstance(value, (int, float)) and 0 < value < math.inf


def _number(value: object, default: float | None) -> float | None:
    """``value`` as a finite float; ``default`` when it is not a number (a bool, a string,
    NaN or an infinity). Ints too large for a float are clamped to +-2**63."""
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return float(min(max(value, -_HUGE), _HUGE))
    if isinstance(value, float) and math.isfinite(value):
        return value
    return default


def initial_headers(
    *, max_retries: int | None, timeout: float | None, not_before: float | None
) -> dict[str, Any]:
    """Headers of a freshly published message (``max_retries`` and ``timeout`` only when
    given: without them the consuming subscription's defaults apply)."""
    headers: dict[str, Any] = {HEADER_ATTEMPT: 0}
    if max_retries is not None:
        headers[HEADER_MAX_RETRIES] = max_retries
    if timeout is not None:
        headers[HEADER_TIMEOUT] = to_ms(timeout)
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


def for_replay(envelope: Envelope, *, max_timeout: float = MAX_HEADER_TIMEOUT) -> Envelope:
    """A dead letter made ready to run again: attempt 0, failure headers dropped, and so are
    the headers :meth:`QueueHeaders.read` (with ``max_timeout``) finds malformed: they take
    their defaults, so a message parked for its headers runs when replayed."""
    changes: dict[str, Any] = dict.fromkeys(_FAILURE_HEADERS)
    head = QueueHeaders.read(envelope.headers, MAX_HEADER_TIMEOUT, max_timeout=max_timeout)
    changes.update(dict.fromkeys(head.malformed))
    changes[HEADER_NOT_BEFORE] = None
    changes[HEADER_ATTEMPT] = 0
    return forwarded(envelope, **changes)


def dead_letter_of(
    envelope: Envelope, channel: str, decode: Callable[[bytes], object]
) -> DeadLetter:
    """``envelope`` (a message of a dead queue) as a :class:`DeadLetter`; a payload that does
    not decode (``decode`` raises) is given as its bytes."""
    headers = envelope.headers
    message: object
    try:
        message = decode(envelope.body)
    except Exception:  # undecodable: the raw bytes, as documented
        message = envelope.body
    attempts = headers.get(HEADER_ATTEMPTS, 0)
    return DeadLetter(
        id=envelope.message_id,
        message=message,
        error=str(headers.get(HEADER_ERROR, "")),
        attempts=attempts if isinstance(attempts, int) and not isinstance(attempts, bool) else 0,
        failed_by=str(headers.get(HEADER_FAILED_BY, "")),
        failed_at=from_ms(headers.get(HEADER_FAILED_AT)) or 0.0,
        trace_id=envelope.trace_id,
        channel=channel,
        error_type=str(headers.get(HEADER_ERROR_TYPE, "")),
        traceback=str(headers.get(HEADER_TRACEBACK, "")),
    )


def error_text(text: str) -> str:
    """``text`` made safe to store and send: characters UTF-8 cannot encode (lone
    surrogates) written as backslash escapes, then cut to :data:`MAX_ERROR_CHARS` characters
    and :data:`MAX_ERROR_BYTES` bytes (never inside a character)."""
    raw = text[:MAX_ERROR_CHARS].encode("utf-8", "backslashreplace")
    return raw[:MAX_ERROR_BYTES].decode("utf-8", "ignore")[:MAX_ERROR_CHARS]


def traceback_text(text: str) -> str:
    """A traceback made safe to store: encodable, at most :data:`MAX_TRACEBACK_BYTES` bytes
    of UTF-8, its end kept (the exception and the innermost frames)."""
    raw = text.encode("utf-8", "backslashreplace")
    if len(raw) <= MAX_TRACEBACK_BYTES:
        return raw.decode("utf-8")
    kept = raw[-(MAX_TRACEBACK_BYTES - 64) :].decode("utf-8", "ignore")
    return "[... the start of the traceback was cut ...]\n" + kept


def parked(
    envelope: Envelope,
    *,
    error: str,
    attempts: int,
    instance: str,
    drop: tuple[str, ...] = (),
    error_type: str = "",
    traceback: str = "",
) -> Envelope:
    """``envelope`` as it goes to the dead queue, with why, how often and by whom (the error
    text sanitised by :func:`error_text`, so any text a handler raised can be stored), without
    the headers named in ``drop`` (malformed ones: the error text shows their values, and a
    replay gives them their defaults)."""
    changes: dict[str, Any] = dict.fromkeys(drop)
    changes[HEADER_ERROR] = error_text(error)
    changes[HEADER_ERROR_TYPE] = error_text(error_type) or None
    changes[HEADER_TRACEBACK] = traceback_text(traceback) or None
    changes[HEADER_ATTEMPTS] = attempts
    changes[HEADER_FAILED_BY] = instance
    changes[HEADER_FAILED_AT] = to_ms(time.time())
    changes[HEADER_NOT_BEFORE] = None
    return forwarded(envelope, **changes)


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

"""One attempt of a queue message: run the handler under its deadline and say how it
failed (text, exception type, traceback), sanitised for the dead queue's headers."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from managers.queue_messages import QueueContext, error_text

Process = Callable[[Any, QueueContext], Awaitable[None]]


@dataclass(slots=True, frozen=True)
class Failure:
    """A failed attempt: its sanitised text, exception type name, traceback (text), and the
    exception (to match ``retry_on``)."""

    text: str
    error_type: str
    traceback: str
    exception: BaseException


async def run_attempt(
    process: Process,
    value: object,
    ctx: QueueContext,
    *,
    stopping: Callable[[], bool],
    redact: Callable[[str], str],
) -> Failure | None:
    """Run one attempt under ``ctx.deadline``; how it failed, or None.

    A timeout is a ``TimeoutError`` failure; a cancellation from elsewhere in the app is a
    ``CancelledError`` failure (so the message is settled, not held unacked); a cancellation
    because the instance stops (``stopping()``, or ``ctx.cancelled`` set) propagates: the
    message stays queued. Texts and tracebacks go through ``redact`` (URL passwords).
    """
    task = asyncio.current_task()
    assert task is not None
    fired = False

    def expire() -> None:
        nonlocal fired
        fired = True
        ctx.cancelled.set()
        task.cancel()

    handle = asyncio.get_running_loop().call_at(ctx.deadline, expire)
    try:
        await process(value, ctx)
    except asyncio.CancelledError:
        if not fired:
            if ctx.cancelled.is_set() or stopping():
                raise  # the instance stops: the message stays queued
            task.uncancel()
            text = "CancelledError: the handler's task was cancelled"
            return Failure(text, "CancelledError", "", asyncio.CancelledError())
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # whatever a handler raises is a failed attempt
        return failure_of(exc, redact)
    finally:
        handle.cancel()
    if fired:  # cancelled by the deadline (or the handler swallowed the cancellation)
        task.uncancel()
        text = f"TimeoutError: the attempt took longer than its timeout ({ctx.timeout}s)"
        return Failure(text, "TimeoutError", "", TimeoutError(text))
    return None


def failure_of(exc: BaseException, redact: Callable[[str], str] = str) -> Failure:
    """``exc`` as a failure: text and traceback sanitised (no local variables: Python's
    traceback never shows them), URL passwords hidden by ``redact``."""
    try:
        trace = "".join(traceback.format_exception(exc))
    except Exception:  # a broken __str__ or __cause__ chain: the type is still known
        trace = ""
    return Failure(redact(describe(exc)), type(exc).__name__, redact(trace), exc)


def describe(exc: BaseException) -> str:
    """``"<Type>: <text>"`` of any exception, sanitised (see
    :func:`~managers.queue_messages.error_text`); an exception whose ``str()`` raises is
    still described by its type."""
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:
        text = f"{type(exc).__name__}: <str() of the exception raised>"
    return error_text(text)

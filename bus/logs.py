"""structlog set-up: JSON in production, console on a terminal, contextvars for tracing.

:func:`configure_logging` runs once per process (the first ``Bus`` calls it unless the
application configured structlog itself). Every bus logs through a logger bound with its
``app`` and ``instance``; handlers run with ``trace_id``, ``channel`` and ``message_id`` bound
in the structlog context, so their own log lines carry them.
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import ExcInfo, FilteringBoundLogger, Processor

from bus.settings import redact_text

LogFormat = Literal["json", "console", "auto"]

_configured = False


def configure_logging(
    level: str = "INFO", fmt: LogFormat = "auto", *, force: bool = False, file: TextIO | None = None
) -> None:
    """Configure structlog for clusterbus (once; ``force=True`` reconfigures).

    Lines go to ``file`` (default: standard error). Leaves an application's own structlog
    configuration alone unless ``force`` is set. Exceptions are rendered without the frames'
    local variables, and URL passwords in any text of a line are replaced by ``***``.
    """
    out = file if file is not None else sys.stderr
    global _configured  # noqa: PLW0603 - process-wide, like structlog's own configuration
    if (_configured or structlog.is_configured()) and not force:
        return
    renderer: Processor
    if fmt == "json" or (fmt == "auto" and not out.isatty()):
        renderer = structlog.processors.JSONRenderer()
        exc: list[Processor] = [_JSON_TRACEBACKS]
    else:
        renderer = structlog.dev.ConsoleRenderer(exception_formatter=_plain_traceback)
        exc = []
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *exc,
            _redact_event,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    _configured = True


_JSON_TRACEBACKS = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
)
"""Exceptions as structured dicts, never with the frames' local variables (they hold
payloads, tokens, passwords: structlog's ``dict_tracebacks`` shows them by default)."""


def _plain_traceback(sio: TextIO, exc_info: ExcInfo) -> None:
    """The console's exception formatter: Python's own traceback (no local variables, unlike
    structlog's default rich traceback), with URL passwords redacted."""
    text = io.StringIO()
    structlog.dev.plain_traceback(text, exc_info)
    sio.write(redact_text(text.getvalue()))


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {key: _redact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_redact(item) for item in value)
    return value


def _redact_event(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Last line of defence: a URL password in any text of the event (the message, a value,
    a rendered exception) is replaced by ``***``."""
    for key in list(event_dict):
        if key != "exc_info":  # the exception itself: its formatter redacts what it renders
            event_dict[key] = _redact(event_dict[key])
    return event_dict


def get_logger(**bound: object) -> FilteringBoundLogger:
    """A logger with ``bound`` key-values on every line."""
    logger: FilteringBoundLogger = structlog.get_logger("clusterbus").bind(**bound)
    return logger

"""Logging: the library logs, the application decides where lines go.

clusterbus never configures logging by itself (SPEC, "Inside someone else's service"). Every
event goes through a :class:`BusLogger`, which at each call looks at what the application set
up:

* **structlog configured** (``structlog.configure`` was called): the event goes through the
  application's structlog pipeline, from a logger named ``clusterbus.<part>``;
* **otherwise**: the event becomes a standard :mod:`logging` record of the logger
  ``clusterbus.<part>`` (``clusterbus.bus``, ``clusterbus.pubsub``, ``clusterbus.queue``,
  ``clusterbus.locks``, ``clusterbus.cache``, ``clusterbus.amqp``, ...). Its message is the
  event name followed by ``key=value`` pairs; the same key-values are attributes of the record
  (for JSON formatters), unless a name is one the record already has.

:func:`configure_logging` is for applications (and the CLI) that want clusterbus's own
output: structlog and the standard library's root logger both render JSON or console lines.

Exceptions are logged as text (Python's traceback, with URL passwords redacted), never with
the frames' local variables, whatever the application's renderer would do; with
:func:`configure_logging`'s JSON output they are structured dicts without locals. Handlers run
with ``trace_id``, ``channel`` and ``message_id`` bound in structlog's context variables; our
events carry them in both routes.
"""

from __future__ import annotations

import io
import logging
import sys
import traceback
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog
from structlog.contextvars import get_contextvars
from structlog.typing import ExcInfo, Processor

from bus.settings import redact_text

try:  # the otel extra: log lines carry the active span's ids
    from opentelemetry import trace as _otel_trace
except ImportError:  # pragma: no cover - exercised by the wheel's smoke test
    _otel_trace = None  # type: ignore[assignment]

LogFormat = Literal["json", "console", "auto"]
ROOT = "clusterbus"
"""The name of the library's loggers' parent: ``logging.getLogger("clusterbus")``."""

_RECORD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)
_ours: list[Processor] | None = None
"""The processors :func:`configure_logging` installed, while they are structlog's."""


class BusLogger:
    """A structured logger that routes each event as the module docstring says.

    Methods take an event name and key-values: ``log.info("bus.started", mode="amqp")``.
    """

    __slots__ = ("_cached", "_context", "_name", "_stdlib")

    def __init__(self, name: str = ROOT, context: dict[str, Any] | None = None) -> None:
        self._name = name
        self._context: dict[str, Any] = context or {}
        self._stdlib = logging.getLogger(name)
        self._cached: tuple[tuple[object, ...], Any] | None = None

    def _structlog(self) -> tuple[Any, bool]:
        """The application's structlog logger for this name (made again whenever structlog
        is reconfigured), and whether the pipeline is :func:`configure_logging`'s."""
        config = structlog.get_config()
        processors = config["processors"]
        key = (id(processors), config["wrapper_class"], config["logger_factory"])
        cached = self._cached
        if cached is None or cached[0] != key:
            cached = self._cached = (key, structlog.get_logger(self._name).bind(**self._context))
        return cached[1], processors is _ours

    @property
    def name(self) -> str:
        """The logger's name (``clusterbus.<part>``)."""
        return self._name

    def bind(self, **new_values: Any) -> BusLogger:
        """This logger with ``new_values`` on every line."""
        return BusLogger(self._name, {**self._context, **new_values})

    def named(self, part: str) -> BusLogger:
        """The logger ``clusterbus.<part>`` with this one's key-values."""
        return BusLogger(f"{ROOT}.{part}", self._context)

    def is_enabled_for(self, level: int) -> bool:
        """Whether an event at ``level`` would be logged now (to skip building costly
        key-values)."""
        if structlog.is_configured():
            return _enabled(self._structlog()[0], level)
        return self._stdlib.isEnabledFor(level)

    def debug(self, event: str, *args: Any, **kw: Any) -> None:
        """Log ``event`` at DEBUG (per-message events are DEBUG)."""
        self._log(logging.DEBUG, "debug", event, kw)

    def info(self, event: str, *args: Any, **kw: Any) -> None:
        """Log ``event`` at INFO."""
        self._log(logging.INFO, "info", event, kw)

    def warning(self, event: str, *args: Any, **kw: Any) -> None:
        """Log ``event`` at WARNING."""
        self._log(logging.WARNING, "warning", event, kw)

    def error(self, event: str, *args: Any, **kw: Any) -> None:
        """Log ``event`` at ERROR (``exc_info=`` adds an exception)."""
        self._log(logging.ERROR, "error", event, kw)

    def exception(self, event: str, *args: Any, **kw: Any) -> None:
        """Log ``event`` at ERROR with the exception being handled."""
        kw.setdefault("exc_info", True)
        self._log(logging.ERROR, "error", event, kw)

    def _log(self, level: int, method: str, event: str, kw: dict[str, Any]) -> None:
        if structlog.is_configured():
            bound, ours = self._structlog()
            if not _enabled(bound, level):
                return
            fields = {**get_contextvars(), **kw, **_span_ids()}
            if not ours:  # somebody else's pipeline: it might show frame locals or passwords
                _exception_as_text(fields)
                fields = {key: _redact(value) for key, value in fields.items()}
                event = redact_text(event)
            getattr(bound, method)(event, **fields)
            return
        if not self._stdlib.isEnabledFor(level):
            return
        fields = {**get_contextvars(), **self._context, **kw, **_span_ids()}
        _exception_as_text(fields)
        fields = {key: _redact(value) for key, value in fields.items()}
        pairs = (f"{k}={_shown(v)}" for k, v in fields.items() if k != "exception")
        text = " ".join([redact_text(event), *pairs])
        if "exception" in fields:
            text = f"{text}\n{fields['exception']}"
        extra = {k: v for k, v in fields.items() if k not in _RECORD_ATTRIBUTES}
        extra["event"] = event
        self._stdlib.log(level, "%s", text, extra=extra, stacklevel=3)


def _span_ids() -> dict[str, str]:
    """The active OpenTelemetry span's ``trace_id`` and ``span_id``, or nothing."""
    if _otel_trace is None:
        return {}
    ids = _otel_trace.get_current_span().get_span_context()
    if not ids.is_valid:
        return {}
    return {
        "trace_id": _otel_trace.format_trace_id(ids.trace_id),
        "span_id": _otel_trace.format_span_id(ids.span_id),
    }


def _enabled(bound: Any, level: int) -> bool:
    """Whether a structlog logger logs ``level`` (True when it cannot say)."""
    check = getattr(bound, "is_enabled_for", None) or getattr(bound, "isEnabledFor", None)
    return True if check is None else bool(check(level))


def _shown(value: Any) -> str:
    text = str(value)
    return repr(text) if (not text or any(c.isspace() for c in text)) else text


def _exception_as_text(fields: dict[str, Any]) -> None:
    """Replace ``exc_info`` in ``fields`` by ``exception``: the traceback as text, without
    local variables, URL passwords redacted."""
    exc_info = fields.pop("exc_info", None)
    if not exc_info:
        return
    if isinstance(exc_info, BaseException):
        error: BaseException | None = exc_info
    elif isinstance(exc_info, tuple):
        error = exc_info[1]
    else:
        error = sys.exc_info()[1]
    if error is not None:
        fields["exception"] = redact_text("".join(traceback.format_exception(error)).rstrip())


def get_logger(name: str = ROOT, **bound: Any) -> BusLogger:
    """The logger ``name`` (``clusterbus`` or ``clusterbus.<part>``) with ``bound``
    key-values on every line."""
    return BusLogger(name, bound)


def configure_logging(
    *, format: LogFormat = "auto", level: str | int = "INFO", file: TextIO | None = None
) -> None:
    """Make this process log as clusterbus's CLI does (for applications that want it).

    Configures structlog (so clusterbus's events and the application's structlog events) and
    the standard library's root logger (so aio-pika's and every other library's records) to
    write one line per event to ``file`` (default: standard error): JSON (``format="json"``),
    human-readable (``"console"``) or, with ``"auto"``, console on a terminal and JSON
    otherwise, from ``level`` up. Calling it again replaces what it set up before.
    Exceptions never show the frames' local variables; URL passwords are redacted.
    """
    global _ours  # noqa: PLW0603 - process-wide, like structlog's and logging's configuration
    out = file if file is not None else sys.stderr
    numeric = level if isinstance(level, int) else logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")  # noqa: TRY004 - a bad value
    renderer: Processor
    if format == "json" or (format == "auto" and not out.isatty()):
        renderer = structlog.processors.JSONRenderer()
        exc: list[Processor] = [_JSON_TRACEBACKS]
    else:
        renderer = structlog.dev.ConsoleRenderer(exception_formatter=_plain_traceback)
        exc = []
    shared: list[Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        *shared,
        *exc,
        _redact_event,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    _ours = processors
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, *exc, _redact_event],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)


_HANDLER_NAME = "clusterbus.configure_logging"

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
        if key not in {"exc_info", "_record", "_from_structlog"}:
            event_dict[key] = _redact(event_dict[key])
    return event_dict

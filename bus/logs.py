"""structlog set-up: JSON in production, console on a terminal, contextvars for tracing.

:func:`configure_logging` runs once per process (the first ``Bus`` calls it unless the
application configured structlog itself). Every bus logs through a logger bound with its
``app`` and ``instance``; handlers run with ``trace_id``, ``channel`` and ``message_id`` bound
in the structlog context, so their own log lines carry them.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog
from structlog.typing import FilteringBoundLogger, Processor

LogFormat = Literal["json", "console", "auto"]

_configured = False


def configure_logging(
    level: str = "INFO", fmt: LogFormat = "auto", *, force: bool = False, file: TextIO | None = None
) -> None:
    """Configure structlog for clusterbus (once; ``force=True`` reconfigures).

    Lines go to ``file`` (default: standard error). Leaves an application's own structlog
    configuration alone unless ``force`` is set.
    """
    out = file if file is not None else sys.stderr
    global _configured  # noqa: PLW0603 - process-wide, like structlog's own configuration
    if (_configured or structlog.is_configured()) and not force:
        return
    renderer: Processor
    if fmt == "json" or (fmt == "auto" and not out.isatty()):
        renderer = structlog.processors.JSONRenderer()
        exc: list[Processor] = [structlog.processors.dict_tracebacks]
    else:
        renderer = structlog.dev.ConsoleRenderer()
        exc = []
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *exc,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    _configured = True


def get_logger(**bound: object) -> FilteringBoundLogger:
    """A logger with ``bound`` key-values on every line."""
    logger: FilteringBoundLogger = structlog.get_logger("clusterbus").bind(**bound)
    return logger

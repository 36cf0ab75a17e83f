"""Test helpers that see what clusterbus logs: a stdlib handler keeping records, and an
application's own structlog pipeline keeping events."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog

from bus.logs import configure_logging


class Records(logging.Handler):
    """A stdlib handler that keeps every record."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def events(self, name: str) -> list[logging.LogRecord]:
        """The records of clusterbus event ``name``."""
        return [r for r in self.records if r.__dict__.get("event") == name]


@contextmanager
def foreign_structlog() -> Iterator[list[dict[str, Any]]]:
    """structlog configured by "the application" (every level, no renderer): the events its
    pipeline receives; the suite's configuration is back afterwards."""
    seen: list[dict[str, Any]] = []

    def keep(_logger: object, _method: str, event: Any) -> Any:
        seen.append(dict(event))
        raise structlog.DropEvent

    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, keep],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    )
    try:
        yield seen
    finally:
        configure_logging(format="console", level="WARNING")

"""The logger the managers write to: what they need of one, as a protocol.

:class:`bus.logs.BusLogger` is the one the facade passes; a structlog bound logger fits too
(tests use one).
"""

from __future__ import annotations

from typing import Any, Protocol


class Logger(Protocol):
    """A structured logger: an event name and key-values, at a level; ``bind`` adds
    key-values to every later line."""

    def debug(self, event: str, *args: Any, **kw: Any) -> Any:
        """Log ``event`` at DEBUG."""

    def info(self, event: str, *args: Any, **kw: Any) -> Any:
        """Log ``event`` at INFO."""

    def warning(self, event: str, *args: Any, **kw: Any) -> Any:
        """Log ``event`` at WARNING."""

    def error(self, event: str, *args: Any, **kw: Any) -> Any:
        """Log ``event`` at ERROR."""

    def exception(self, event: str, *args: Any, **kw: Any) -> Any:
        """Log ``event`` at ERROR with the exception being handled."""

    def is_enabled_for(self, level: int) -> bool:
        """Whether an event at ``level`` (a :mod:`logging` level) would be logged now."""

    def bind(self, **new_values: Any) -> Logger:
        """This logger with ``new_values`` on every line."""

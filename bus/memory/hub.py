"""The hub: what the broker is to AMQP-mode instances, for memory-mode instances."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bus.memory.broadcast import MemoryBroadcast


class MemoryHub:
    """Routes messages between the memory-mode buses that share it.

    Buses on one hub behave as instances of one cluster; buses on different hubs never see
    each other. Without ``hub=``, every memory-mode bus of a process uses :func:`default_hub`.
    """

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str], set[MemoryBroadcast]] = {}

    def bind(self, app: str, channel: str, endpoint: MemoryBroadcast) -> None:
        """Route ``channel`` of ``app`` to ``endpoint`` from now on."""
        self._routes.setdefault((app, channel), set()).add(endpoint)

    def unbind(self, app: str, channel: str, endpoint: MemoryBroadcast) -> None:
        """Stop routing ``channel`` of ``app`` to ``endpoint``."""
        endpoints = self._routes.get((app, channel))
        if endpoints is not None:
            endpoints.discard(endpoint)
            if not endpoints:
                del self._routes[(app, channel)]

    def listeners(self, app: str, channel: str, besides: MemoryBroadcast) -> int:
        """How many endpoints other than ``besides`` receive ``channel`` of ``app``."""
        endpoints = self._routes.get((app, channel), ())
        return len(endpoints) - (besides in endpoints)

    def routes(self, app: str, channel: str) -> tuple[MemoryBroadcast, ...]:
        """The endpoints bound to ``channel`` of ``app`` right now."""
        return tuple(self._routes.get((app, channel), ()))


_default: MemoryHub | None = None


def default_hub() -> MemoryHub:
    """The process-wide hub shared by memory-mode buses created without ``hub=``."""
    global _default  # noqa: PLW0603 - one hub per process is the documented behaviour
    if _default is None:
        _default = MemoryHub()
    return _default

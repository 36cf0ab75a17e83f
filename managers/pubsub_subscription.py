"""A pub/sub subscription: one handler on one channel (``bus.pubsub.subscribe`` returns it)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from managers.pubsub import PubSubManager

Handler = Callable[[Any], Awaitable[None]]


class Subscription:
    """One handler subscribed to one channel; ``cancel()`` unsubscribes it."""

    __slots__ = ("_manager", "channel", "debounce", "handler", "model")

    def __init__(
        self,
        manager: PubSubManager,
        channel: str,
        handler: Handler,
        debounce: float,
        model: type[BaseModel] | None,
    ) -> None:
        self._manager = manager
        self.channel = channel
        self.handler = handler
        self.debounce = debounce
        self.model = model

    async def cancel(self) -> None:
        """Unsubscribe this handler from its channel."""
        await self._manager.unsubscribe(self.channel, self.handler)

    def __repr__(self) -> str:
        return f"<Subscription {self.channel!r} {self.handler!r} debounce={self.debounce}>"

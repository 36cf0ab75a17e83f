"""The base class of plugins: lifecycle hooks and sync messages between instances."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from bus import Bus, BusError, BusLogger, PayloadError
from bus.names import validate_channel

if TYPE_CHECKING:
    from plugins.app import App


class Plugin:
    """A piece of an app. Subclasses set ``name`` and override the hooks they need.

    ``handle_sync_message`` is subscribed (on sync channel ``name``) only when a subclass
    overrides it, and is never called once the app is stopping.
    """

    name: ClassVar[str] = ""

    def __init__(self, app: App, **options: Any) -> None:
        if not type(self).name:
            raise TypeError(f"{type(self).__name__} must set a class attribute `name`")
        validate_channel(type(self).name)
        self.app = app
        self.options: dict[str, Any] = options
        self.log: BusLogger = app.bus.log.named("plugins").bind(plugin=self.name)

    @property
    def bus(self) -> Bus:
        """The bus of the app this plugin belongs to."""
        return self.app.bus

    async def before_load(self) -> None:
        """First hook: every plugin's ``before_load`` runs before any ``load``."""

    async def load(self) -> None:
        """Set up (create caches, subscribe, register queue consumers); the bus is not
        connected yet, subscriptions made here are bound when it starts."""

    async def after_start(self) -> None:
        """The bus is connected and every subscription bound."""

    async def before_stop(self) -> None:
        """Deliveries have stopped; the bus can still publish. Release resources here."""

    async def handle_sync_message(self, message: Any) -> None:
        """A sync message sent by this plugin on another instance (debounced)."""

    async def send_sync_message(self, message: Any, transaction: object = None) -> bool:
        """Send ``message`` to this plugin on the other instances (after ``transaction``
        commits, if given). False, logged, when the broker could not take it; a payload
        that cannot be encoded raises ``PayloadError``."""
        try:
            return await self.bus.sync.publish(self.name, message, transaction=transaction)
        except PayloadError:  # bad input, not a broker failure
            raise
        except BusError as exc:
            failure = str(exc)
        self.log.error("plugin.sync_send_failed", error=failure)
        return False

    @classmethod
    def handles_sync_messages(cls) -> bool:
        """True when the class overrides :meth:`handle_sync_message`."""
        return cls.handle_sync_message is not Plugin.handle_sync_message

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} of {self.app.bus.name!r}>"

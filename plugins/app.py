"""The App: one instance of a service, its bus and its plugins."""

from __future__ import annotations

import inspect
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

from bus import Bus, BusError, MemoryHub, Settings
from plugins.plugin import Plugin

P = TypeVar("P", bound=Plugin)


class App:
    """Hosts plugins on a :class:`~bus.Bus` built from the same arguments.

    ``start()``: every plugin's ``before_load``, then every ``load``, then the bus connects
    and binds the subscriptions, then every ``after_start``. ``stop()``: deliveries stop
    first (queue consumers, subscriptions, pending debounces), then the ``before_stop``
    hooks run (in reverse order) while the bus can still publish, then the bus closes.
    """

    def __init__(
        self,
        name: str,
        *,
        amqp_url: str | None = None,
        hub: MemoryHub | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.bus = Bus(name, amqp_url=amqp_url, hub=hub, settings=settings)
        self.plugins: dict[str, Plugin] = {}
        self._loaded: list[Plugin] = []  # plugins whose load() completed: they get before_stop
        self._state: Literal["new", "started", "stopping", "stopped"] = "new"

    @property
    def name(self) -> str:
        """The app name (the bus's)."""
        return self.bus.name

    @property
    def stopping(self) -> bool:
        """True once ``stop()`` has begun."""
        return self._state in ("stopping", "stopped")

    def add(self, plugin_class: type[P], **options: Any) -> P:
        """Create a plugin of ``plugin_class`` with ``options`` and host it."""
        if self._state != "new":
            raise BusError(f"app {self.name!r}: add plugins before start()")
        plugin = plugin_class(self, **options)
        if plugin.name in self.plugins:
            raise ValueError(f"app {self.name!r} already has a plugin named {plugin.name!r}")
        self.plugins[plugin.name] = plugin
        return plugin

    def get(self, plugin_class: type[P]) -> P:
        """The hosted plugin of ``plugin_class`` (KeyError naming it when there is none)."""
        plugin = self.plugins.get(plugin_class.name)
        if not isinstance(plugin, plugin_class):
            raise KeyError(f"app {self.name!r} has no {plugin_class.__name__} plugin")
        return plugin

    async def start(self) -> None:
        """Load the plugins, connect, subscribe, then ``after_start``.

        When a step fails, the app stops (only the plugins whose ``load`` completed get
        ``before_stop``; the bus is stopped) and the step's error is raised.
        """
        if self._state != "new":
            raise BusError(f"app {self.name!r} was started already")
        plugins = list(self.plugins.values())
        for plugin in plugins:  # refused before anything runs, like bus.sync.subscribe
            if type(plugin).handles_sync_messages() and not inspect.iscoroutinefunction(
                plugin.handle_sync_message
            ):
                raise TypeError(
                    f"sync handler for channel {plugin.name!r} must be an async function: "
                    f"{type(plugin).__qualname__}.handle_sync_message is not 'async def'"
                )
        self._state = "started"
        try:
            for plugin in plugins:
                await plugin.before_load()
            for plugin in plugins:
                await plugin.load()
                self._loaded.append(plugin)
            await self.bus.start()
            for plugin in plugins:
                if type(plugin).handles_sync_messages():
                    await self.bus.sync.subscribe(plugin.name, self._sync_handler(plugin))
            for plugin in plugins:
                await plugin.after_start()
        except BaseException:
            try:
                await self.stop()
            except Exception:  # the caller gets the cause; this is logged
                self.bus.log.exception("app.stop_after_failed_start_failed")
            raise

    def _sync_handler(self, plugin: Plugin) -> Any:
        async def handle(message: Any) -> None:
            if not self.stopping:
                await plugin.handle_sync_message(message)

        handle.__qualname__ = f"{type(plugin).__name__}.handle_sync_message"
        return handle

    async def stop(self) -> None:
        """Stop deliveries, run ``before_stop`` hooks (of the plugins whose ``load``
        completed, in reverse order), close the bus. A second call is a no-op."""
        if self._state in ("stopping", "stopped"):
            return
        self._state = "stopping"
        try:
            await self.bus.stop_deliveries()
            for plugin in reversed(self._loaded):
                try:
                    await plugin.before_stop()
                except Exception:
                    plugin.log.exception("plugin.before_stop_failed")
        finally:
            await self.bus.stop()
            self._state = "stopped"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return f"<App {self.name!r} plugins={list(self.plugins)} {self._state}>"

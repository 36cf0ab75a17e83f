"""An App of two plugins, run as a service by the runner.

``Mailer`` consumes the event queue ``mail`` (each message is taken by one instance);
``PriceList`` keeps prices in memory on every instance and tells the others when one changes,
with a sync message. Run it from the repository root (memory mode without
``CLUSTERBUS_AMQP_URL``; several copies share the work with it set)::

    clusterbus run examples.app_of_plugins:app
    clusterbus run examples.app_of_plugins:create_app --http-port 8080

SIGTERM or Ctrl-C stops it gracefully: the queue stops delivering, mails being sent finish
(within ``stop_timeout``), the plugins' ``before_stop`` hooks run, the bus closes.
"""

from __future__ import annotations

from typing import Any

from clusterbus import App, Plugin, QueueContext

APP_NAME = "shop"


class Mailer(Plugin):
    """Sends the mails queued on ``mail``, four at a time per instance."""

    name = "mailer"

    async def load(self) -> None:
        self.sent: list[str] = []
        await self.bus.queue.subscribe("mail", self.send, concurrency=4)

    async def after_start(self) -> None:
        await self.bus.queue.publish("mail", {"to": "ops@example.com", "subject": "started"})

    async def send(self, message: dict[str, Any], ctx: QueueContext) -> None:
        """The queue handler: "sends" one mail (a log line here)."""
        self.sent.append(ctx.id)
        self.log.info("mail.sent", to=message["to"], subject=message["subject"], id=ctx.id)

    async def before_stop(self) -> None:
        self.log.info("mailer.stopping", sent=len(self.sent))


class PriceList(Plugin):
    """Prices, the same on every instance: a change made on one reaches the others as a
    sync message, which :meth:`handle_sync_message` applies."""

    name = "price-list"

    async def load(self) -> None:
        self.prices: dict[str, float] = {}

    async def set_price(self, item: str, price: float) -> None:
        """Change a price here and on every other instance."""
        self.prices[item] = price
        await self.send_sync_message({"item": item, "price": price})

    async def handle_sync_message(self, message: dict[str, Any]) -> None:
        self.prices[message["item"]] = message["price"]
        self.log.info("price.updated", item=message["item"], price=message["price"])


def create_app() -> App:
    """A new App (settings from the ``CLUSTERBUS_*`` environment variables)."""
    app = App(APP_NAME)
    app.add(Mailer)
    app.add(PriceList)
    return app


app = create_app()
"""What ``clusterbus run examples.app_of_plugins:app`` runs."""

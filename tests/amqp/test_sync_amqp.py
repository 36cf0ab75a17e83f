"""Sync messages when the broker is gone: the plugin call reports, the bus call raises."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import pytest

from bus import BusUnavailable
from plugins import App, Plugin
from tests.amqp.proxy import BrokerProxy
from tests.conftest import fast_settings, unique_app

pytestmark = pytest.mark.amqp


class Notes(Plugin):
    name = "notes"


async def test_send_sync_message_returns_false_when_the_broker_is_unreachable(
    amqp_url: str, debug_logs: list[MutableMapping[str, Any]]
) -> None:
    proxy = BrokerProxy()
    await proxy.start()
    app = App(unique_app(), amqp_url=proxy.url(), settings=fast_settings(publish_timeout=1.0))
    notes = app.add(Notes)
    try:
        await app.start()
        assert await notes.send_sync_message("while connected") is True
        await proxy.cut()
        assert await notes.send_sync_message("during the outage") is False
        failure = [e for e in debug_logs if e["event"] == "plugin.sync_send_failed"]
        assert failure and failure[0]["plugin"] == "notes"
        with pytest.raises(BusUnavailable):
            await app.bus.sync.publish("notes", "raises underneath")
    finally:
        await app.stop()
        await proxy.cut()

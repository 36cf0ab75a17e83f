"""An outage logs one warning and, once the connection is back, one summary: not a warning
per reconnect attempt (issue 12: reconnect warnings are rate-limited)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
import structlog

from bus import Bus
from bus.amqp import AmqpTransport
from tests.conftest import eventually, fast_settings, unique_app
from tests.faults.proxy import FaultProxy
from tests.log_records import Records

pytestmark = pytest.mark.amqp


class _Records(Records):
    def attempts(self) -> list[logging.LogRecord]:
        return [
            r
            for r in self.records
            if r.name == "aio_pika.robust_connection"
            and str(r.msg).startswith("Connection attempt to")
        ]


@pytest.fixture
def records() -> Iterator[_Records]:
    """Every record of clusterbus and aio-pika's reconnect logger, structlog unconfigured
    (so clusterbus's events are stdlib records too)."""
    from bus.logs import configure_logging

    structlog.reset_defaults()
    handler = _Records()
    loggers = [logging.getLogger("clusterbus"), logging.getLogger("aio_pika.robust_connection")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
            logger.setLevel(logging.NOTSET)
        configure_logging(format="console", level="WARNING")


async def test_an_outage_logs_one_warning_and_a_summary(amqp_url: str, records: _Records) -> None:
    settings = fast_settings(reconnect_interval=0.05, connect_timeout=2.0)
    async with (
        FaultProxy.in_front_of(amqp_url) as proxy,
        Bus(unique_app(), amqp_url=proxy.url(), settings=settings) as bus,
    ):
        transport = getattr(bus._backend, "transport", None)
        assert isinstance(transport, AmqpTransport)
        await proxy.cut(refuse=True)  # every attempt is refused until restore()
        connection = transport.connection
        await eventually(lambda: connection.failed_attempts >= 5, timeout=30, what="attempts")
        await proxy.restore()
        await eventually(lambda: transport.reconnects >= 1, timeout=30, what="reconnect")
        await asyncio.sleep(0)
    assert len(records.events("amqp.connection_lost")) == 1
    assert len(records.attempts()) == 1, [r.getMessage() for r in records.attempts()]
    (summary,) = records.events("amqp.reconnected")
    assert summary.levelno == logging.INFO
    assert summary.__dict__["failed_attempts"] >= 5
    assert summary.__dict__["outage_seconds"] > 0

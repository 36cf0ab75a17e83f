"""Fixtures of the broker-only tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel


@pytest.fixture
async def raw(amqp_url: str) -> AsyncIterator[AbstractChannel]:
    """A plain aio-pika channel on the test broker, to look at or inject raw messages."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        yield await connection.channel()

"""Deleting what a benchmark declared on RabbitMQ, once its run is over."""

from __future__ import annotations

from collections.abc import Sequence

import aio_pika


async def delete_exchanges(amqp_url: str, names: Sequence[str]) -> None:
    """Delete ``names`` on the broker through a short-lived connection."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        for name in names:
            await channel.exchange_delete(name)
    finally:
        await connection.close()

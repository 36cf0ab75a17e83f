"""A TCP proxy in front of the broker, to cut the network between a bus and RabbitMQ.

Cutting the proxy is a real network failure seen by a real client talking to the real
broker; nothing about the broker is simulated.
"""

from __future__ import annotations

import asyncio
import contextlib


class BrokerProxy:
    """Forwards 127.0.0.1:<port> to the broker; ``cut()`` drops every connection and refuses
    new ones until ``restore()``."""

    def __init__(self, upstream_host: str = "127.0.0.1", upstream_port: int = 5672) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    async def cut(self) -> None:
        """Close the listener and every forwarded connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        """Accept connections again on the same port."""
        await self.start()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.transport.abort()

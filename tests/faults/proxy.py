"""A loopback TCP proxy in front of the broker that cuts, stalls and delays the network.

Every fault is a real network fault seen by a real client talking to the real broker; nothing
about the broker or the client is simulated. Directions are named from the client's side:

* ``"up"``: client -> broker bytes,
* ``"down"``: broker -> client bytes,
* ``"both"``.

What each fault does:

* :meth:`FaultProxy.cut` aborts connections. ``"both"`` resets both sockets at once (both
  sides learn at once); ``"up"`` resets only the broker's socket (the broker learns at once,
  the client keeps a silent socket and learns only from its heartbeat); ``"down"`` resets only
  the client's socket (the client learns at once, the broker keeps the connection, and with it
  any lock token the client held, until *its* heartbeat timeout). With ``refuse=True`` (the
  default) the proxy stops listening, so new connections are refused, until
  :meth:`FaultProxy.restore` listens again on the same port.
* :meth:`FaultProxy.stall` stops forwarding bytes in a direction while keeping both sockets
  open: the "half-dead network" that only heartbeats detect. Bytes read meanwhile are held, in
  order, and forwarded by :meth:`FaultProxy.unstall` (like TCP retransmitting after a
  partition heals); a close seen on one side is held too, so a stalled direction never tells
  the other side anything. New connections accepted while stalled are stalled as well.
* :meth:`FaultProxy.delay` adds latency to each chunk in a direction (pipelined: the order and
  the throughput are kept, each chunk arrives ``seconds`` later).

Faults apply to every connection (methods of :class:`FaultProxy`, also inherited by later
connections) or to one (methods of :class:`ProxiedConnection`, from ``proxy.connections``).
Bytes forwarded are counted per connection and in total.

Use::

    async with FaultProxy() as proxy:               # or FaultProxy.in_front_of(url)
        bus = Bus("app", amqp_url=proxy.url(), settings=...)
        proxy.stall("both")                          # heartbeats stop
        ...
        proxy.unstall()
        await proxy.cut(refuse=False)                # a blip: the client reconnects at once
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self
from urllib.parse import urlsplit, urlunsplit

Direction = Literal["up", "down", "both"]
"""``"up"``: client -> broker; ``"down"``: broker -> client; ``"both"``."""

_CHUNK = 65536
_HELD_CHUNKS = 64  # chunks held per direction before the proxy stops reading (back-pressure)


def _directions(direction: Direction) -> tuple[Literal["up", "down"], ...]:
    if direction == "both":
        return ("up", "down")
    if direction in ("up", "down"):
        return (direction,)
    raise ValueError(f"direction is 'up', 'down' or 'both', got {direction!r}")


@dataclass(frozen=True, slots=True)
class _End:
    """The source side of a direction is gone: ``reset`` for an error, else an EOF."""

    reset: bool


class _Flow:
    """One direction of one connection: a reader task filling a bounded queue of chunks
    (stamped with their arrival time) and a writer task that forwards them once the
    direction flows and each chunk's delay has passed."""

    def __init__(self, name: Literal["up", "down"], *, stalled: bool, delay: float) -> None:
        self.name = name
        self.flowing = asyncio.Event()
        if not stalled:
            self.flowing.set()
        self.delay = delay
        self.bytes = 0
        self.chunks: asyncio.Queue[tuple[float, bytes | _End]] = asyncio.Queue(_HELD_CHUNKS)
        self.wake = asyncio.Event()  # a delay or stall changed: re-check the current chunk
        self.severed = False  # one socket was cut: drop everything, forward no close

    def sever(self) -> None:
        self.severed = True
        self.flowing.set()
        self.wake.set()

    def set_stalled(self, stalled: bool) -> None:
        if stalled:
            self.flowing.clear()
        else:
            self.flowing.set()
        self.wake.set()

    def set_delay(self, seconds: float) -> None:
        self.delay = seconds
        self.wake.set()

    async def gate(self, arrived: float) -> None:
        """Wait until the direction flows and the chunk's delay has passed."""
        loop = asyncio.get_running_loop()
        while not self.severed:
            self.wake.clear()
            if not self.flowing.is_set():
                await self.flowing.wait()
                continue
            due = arrived + self.delay
            if loop.time() >= due:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(due):
                    await self.wake.wait()


class ProxiedConnection:
    """One client connection and its connection to the broker.

    ``stall``/``unstall``/``delay``/``cut`` act on this connection only. ``bytes_up`` and
    ``bytes_down`` count the bytes forwarded so far.
    """

    def __init__(
        self,
        proxy: FaultProxy,
        number: int,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        broker: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.number = number
        """1 for the first connection the proxy accepted, then 2, ..."""
        self._client = client
        self._broker = broker
        peer = client[1].get_extra_info("peername")
        self.peer: str = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        """The client's address (its local port tells which process opened it)."""
        self.flows = {
            name: _Flow(
                name,
                stalled=name in proxy.stalled_directions,
                delay=proxy.delays[name],
            )
            for name in ("up", "down")
        }
        self.closed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        state = "closed" if self.closed.is_set() else "open"
        stalled = [n for n, f in self.flows.items() if not f.flowing.is_set()]
        return (
            f"<ProxiedConnection #{self.number} {self.peer} {state} stalled={stalled} "
            f"up={self.bytes_up}B down={self.bytes_down}B>"
        )

    @property
    def bytes_up(self) -> int:
        """Bytes forwarded client -> broker."""
        return self.flows["up"].bytes

    @property
    def bytes_down(self) -> int:
        """Bytes forwarded broker -> client."""
        return self.flows["down"].bytes

    # faults --------------------------------------------------------------------------------

    def stall(self, direction: Direction = "both") -> None:
        """Stop forwarding ``direction`` (bytes and closes are held) until :meth:`unstall`."""
        for name in _directions(direction):
            self.flows[name].set_stalled(True)

    def unstall(self, direction: Direction = "both") -> None:
        """Forward ``direction`` again, held bytes first."""
        for name in _directions(direction):
            self.flows[name].set_stalled(False)

    def delay(self, seconds: float, direction: Direction = "both") -> None:
        """Deliver each chunk of ``direction`` ``seconds`` after it arrived (0: no delay)."""
        if seconds < 0:
            raise ValueError(f"a delay is >= 0 seconds, got {seconds!r}")
        for name in _directions(direction):
            self.flows[name].set_delay(seconds)

    def cut(self, direction: Direction = "both") -> None:
        """Reset this connection: ``"both"`` sockets, or only the broker's (``"up"``: the
        client is not told) or only the client's (``"down"``: the broker is not told).

        The socket left open gets nothing more, and what its peer sends is read and dropped,
        so that peer's own close (once its heartbeat gave up) is noticed and the socket freed.
        """
        names = _directions(direction)
        if len(names) == 2:
            _reset(self._broker[1])
            _reset(self._client[1])
            self._finish()
            return
        for flow in self.flows.values():
            flow.sever()
        _reset(self._broker[1] if names == ("up",) else self._client[1])

    # plumbing --------------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        client_reader, client_writer = self._client
        broker_reader, broker_writer = self._broker
        for flow, reader, writer in (
            (self.flows["up"], client_reader, broker_writer),
            (self.flows["down"], broker_reader, client_writer),
        ):
            self._tasks.append(loop.create_task(self._read(flow, reader)))
            self._tasks.append(loop.create_task(self._write(flow, writer)))
        for task in self._tasks:
            task.add_done_callback(self._task_done)

    async def _read(self, flow: _Flow, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(_CHUNK):
                await flow.chunks.put((loop.time(), data))
        except (OSError, asyncio.IncompleteReadError):
            await flow.chunks.put((loop.time(), _End(reset=True)))
        else:
            await flow.chunks.put((loop.time(), _End(reset=False)))

    async def _write(self, flow: _Flow, writer: asyncio.StreamWriter) -> None:
        while True:
            arrived, item = await flow.chunks.get()
            await flow.gate(arrived)
            if flow.severed or writer.transport.is_closing():
                if isinstance(item, _End):
                    return
                continue  # cut: drop what arrives, keep reading until the source closes
            if isinstance(item, _End):
                if item.reset:
                    _reset(writer)
                else:
                    writer.close()  # flushes what was written, then FIN
                return
            writer.write(item)
            flow.bytes += len(item)
            self.proxy.bytes[flow.name] += len(item)
            try:
                await writer.drain()
            except OSError:
                writer.transport.abort()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        # the connection is over once both writers forwarded their end and both readers ended
        if all(t.done() for t in self._tasks):
            self._finish()

    def _finish(self) -> None:
        for _, writer in (self._client, self._broker):
            if not writer.transport.is_closing():  # a closing one is flushing a graceful close
                _reset(writer)
        for task in self._tasks:
            task.cancel()
        if not self.closed.is_set():
            self.closed.set()
            self.proxy.forget(self)


class FaultProxy:
    """Forwards ``127.0.0.1:<port>`` to the broker, with faults on demand.

    ``connections`` lists the open proxied connections (oldest first); ``accepted`` counts
    the connections accepted and forwarded, ``refused`` those reset because a refusing
    :meth:`cut` came while they were being opened, ``cuts`` the connections cut;
    ``bytes["up"|"down"]`` the bytes forwarded in total.
    """

    def __init__(
        self,
        upstream_host: str = "127.0.0.1",
        upstream_port: int = 5672,
        *,
        userinfo: str = "guest:guest",
        vhost_path: str = "/",
        query: str = "",
        port: int = 0,
    ) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._userinfo = userinfo
        self._vhost_path = vhost_path or "/"
        self._query = query
        self._server: asyncio.Server | None = None
        self._connections: dict[int, ProxiedConnection] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = port
        self.refusing = False
        self.stalled_directions: set[Literal["up", "down"]] = set()
        self.delays: dict[Literal["up", "down"], float] = {"up": 0.0, "down": 0.0}
        self.bytes: dict[Literal["up", "down"], int] = {"up": 0, "down": 0}
        self.accepted = 0
        self.refused = 0
        self.cuts = 0

    @classmethod
    def in_front_of(cls, url: str) -> FaultProxy:
        """A proxy for the broker of ``url`` whose :meth:`url` keeps its credentials, vhost
        and query."""
        parts = urlsplit(url)
        return cls(
            parts.hostname or "127.0.0.1",
            parts.port or 5672,
            userinfo=parts.netloc.rpartition("@")[0],
            vhost_path=parts.path,
            query=parts.query,
        )

    def url(self) -> str:
        """The AMQP URL that goes through the proxy."""
        host = f"127.0.0.1:{self.port}"
        netloc = f"{self._userinfo}@{host}" if self._userinfo else host
        return urlunsplit(("amqp", netloc, self._vhost_path, self._query, ""))

    @property
    def connections(self) -> list[ProxiedConnection]:
        """The open connections, oldest first."""
        return list(self._connections.values())

    # life cycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen (on ``port``, or on a free port the first time)."""
        self.refusing = False
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
            self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and reset every connection (idempotent)."""
        self._stop_listening()
        for connection in self.connections:
            connection.cut("both")
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        await asyncio.sleep(0)  # let the cancelled forwarding tasks finish

    def _stop_listening(self) -> None:
        # new connections get ECONNREFUSED; start() listens again on the same port
        server, self._server = self._server, None
        if server is not None:
            server.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # faults on every connection ---------------------------------------------------------------

    async def cut(self, direction: Direction = "both", *, refuse: bool = True) -> int:
        """Reset every open connection (see :meth:`ProxiedConnection.cut` for ``direction``);
        with ``refuse`` the proxy stops listening (new connections are refused) until
        :meth:`restore`. Returns the number of connections cut."""
        if refuse:
            self.refusing = True
            self._stop_listening()
        cut = self.connections
        for connection in cut:
            connection.cut(direction)
        self.cuts += len(cut)
        await asyncio.sleep(0)  # let the forwarding tasks see it
        return len(cut)

    async def restore(self) -> None:
        """Listen again, on the same port, after a refusing :meth:`cut`."""
        await self.start()

    def stall(self, direction: Direction = "both") -> None:
        """Stop forwarding ``direction`` on every connection, present and future."""
        for name in _directions(direction):
            self.stalled_directions.add(name)
        for connection in self.connections:
            connection.stall(direction)

    def unstall(self, direction: Direction = "both") -> None:
        """Forward ``direction`` again on every connection (held bytes first)."""
        for name in _directions(direction):
            self.stalled_directions.discard(name)
        for connection in self.connections:
            connection.unstall(direction)

    def delay(self, seconds: float, direction: Direction = "both") -> None:
        """Add ``seconds`` of latency per chunk in ``direction`` on every connection, present
        and future (0 removes it)."""
        if seconds < 0:
            raise ValueError(f"a delay is >= 0 seconds, got {seconds!r}")
        for name in _directions(direction):
            self.delays[name] = seconds
        for connection in self.connections:
            connection.delay(seconds, direction)

    async def heal(self) -> None:
        """End every fault: accept again, no stall, no delay."""
        self.unstall("both")
        self.delay(0.0, "both")
        await self.restore()

    async def wait_for_connections(self, count: int = 1, timeout: float = 30.0) -> None:
        """Wait until at least ``count`` connections are open (TimeoutError after
        ``timeout`` seconds)."""
        async with asyncio.timeout(timeout):
            while len(self._connections) < count:
                await asyncio.sleep(0.01)

    # plumbing --------------------------------------------------------------------------------

    def forget(self, connection: ProxiedConnection) -> None:
        self._connections.pop(connection.number, None)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._open(reader, writer))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _open(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            broker = await asyncio.open_connection(*self._upstream)
        except OSError:
            _reset(writer)
            return
        if self.refusing:  # cut while connecting
            self.refused += 1
            _reset(writer)
            _reset(broker[1])
            return
        self.accepted += 1
        connection = ProxiedConnection(self, self.accepted, (reader, writer), broker)
        self._connections[connection.number] = connection
        connection.start()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0) rather than a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


BrokerProxy = FaultProxy
"""The name the older broker tests use."""

__all__ = ["BrokerProxy", "Direction", "FaultProxy", "ProxiedConnection"]

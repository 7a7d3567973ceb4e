"""Peers for the connection tests: a serving side with real connections or a raw
peer, a connected client, and :class:`Raw`, which speaks the protocol by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import trio

from spear_actors.protocol.calls import Handler
from spear_actors.protocol.connection import Connection, ConnectionConfig
from spear_actors.protocol.handshake import Authenticator, accept_connection, open_connection
from spear_actors.protocol.messages import Hello, Message, Ping, Welcome, decode_message, encode_message
from spear_actors.protocol.transports import (
    Endpoint,
    StreamTransport,
    Transport,
    WebsocketTransport,
    open_transport,
    serve_endpoint,
)

# Generous guard for anything that should happen "at once" on a real socket.
PROMPTLY = 5.0


TransportHandler = Callable[[Transport], Awaitable[None]]


class Server:
    def __init__(self) -> None:
        self.endpoint: Endpoint | None = None
        self.connections: list[Connection] = []
        self.accepted = 0
        self.finished = 0  # connections whose handler has returned (all its tasks ended)


@asynccontextmanager
async def serving(
    url: str,
    handler: Handler | None = None,
    *,
    authenticator: Authenticator | None = None,
    config: ConnectionConfig | None = None,
    max_frame_size: int | None = None,
    on_transport: TransportHandler | None = None,
) -> AsyncIterator[Server]:
    """Serve *url* with real connections (or with *on_transport* as a raw peer)."""
    server = Server()

    async def accept(transport: Transport) -> None:
        server.accepted += 1
        async with accept_connection(
            transport, handler=handler, authenticator=authenticator, config=config
        ) as connection:
            server.connections.append(connection)
            await connection.wait_closed()
        server.finished += 1

    kwargs = {} if max_frame_size is None else {"max_frame_size": max_frame_size}
    async with trio.open_nursery() as nursery:
        server.endpoint = await nursery.start(partial(serve_endpoint, url, on_transport or accept, **kwargs))
        yield server
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def connected(
    server: Server,
    hello: Hello | None = None,
    *,
    config: ConnectionConfig | None = None,
    handler: Handler | None = None,
) -> AsyncIterator[Connection]:
    assert server.endpoint is not None
    async with (
        open_transport(server.endpoint) as transport,
        open_connection(transport, hello or Hello(), config=config, handler=handler) as connection,
    ):
        yield connection


class Raw:
    """A peer that speaks the protocol by hand over a bare transport."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    async def send(self, *messages: Message) -> None:
        await self.transport.send_bodies([encode_message(m) for m in messages])

    async def receive(self) -> Message | None:
        body = await self.transport.receive_body()
        return None if body is None else decode_message(body)

    async def receive_skipping_pings(self) -> Message | None:
        while True:
            message = await self.receive()
            if not isinstance(message, Ping):
                return message

    async def hello(self, hello: Hello | None = None) -> Welcome:
        await self.send(hello or Hello())
        welcome = await self.receive()
        assert isinstance(welcome, Welcome), welcome
        return welcome

    async def welcome(self, welcome: Welcome) -> Hello:
        hello = await self.receive()
        assert isinstance(hello, Hello), hello
        await self.send(welcome)
        return hello

    async def abort(self) -> None:
        """Drop the link without any goodbye or close frame."""
        if isinstance(self.transport, StreamTransport):
            await trio.aclose_forcefully(self.transport.stream)
        else:
            assert isinstance(self.transport, WebsocketTransport)
            await trio.aclose_forcefully(self.transport.ws.stream)


@asynccontextmanager
async def raw_client(server: Server) -> AsyncIterator[Raw]:
    assert server.endpoint is not None
    async with open_transport(server.endpoint) as transport:
        yield Raw(transport)

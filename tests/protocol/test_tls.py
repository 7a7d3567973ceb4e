"""The framed transport over a TLS stream (trio.SSLStream): no socket fast paths, the
same protocol. Certificates from trustme."""

from __future__ import annotations

import ssl
from functools import partial
from typing import Any

import trio
import trustme

from spear_actors.protocol.calls import IncomingRequest
from spear_actors.protocol.handshake import accept_connection, open_connection
from spear_actors.protocol.messages import Hello
from spear_actors.protocol.transports import SocketTransport, StreamTransport, stream_transport

from .peers import PROMPTLY


async def echo(request: IncomingRequest) -> Any:
    if request.method == "count":
        for i in range(request.params):
            await request.send_item(i)
        return "counted"
    return request.params


async def test_a_connection_over_tls() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    async def serve(stream: trio.SSLStream[trio.SocketStream]) -> None:
        transport = stream_transport(stream)
        assert type(transport) is StreamTransport  # not a SocketTransport: no fast paths
        async with accept_connection(transport, handler=echo) as connection:
            await connection.wait_closed()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_ssl_over_tcp, serve, 0, server_context, host="127.0.0.1"))
        port = listeners[0].transport_listener.socket.getsockname()[1]
        stream = await trio.open_ssl_over_tcp_stream("localhost", port, ssl_context=client_context)
        transport = stream_transport(stream)
        assert not isinstance(transport, SocketTransport)
        with trio.fail_after(PROMPTLY):
            async with open_connection(transport, Hello()) as connection:
                assert await connection.request("echo", {"x": 1}) == {"x": 1}
                big = b"b" * (3 * 1024 * 1024)  # more than one TLS record and socket buffer
                assert await connection.request("echo", big) == big
                async with connection.stream("count", 5, window=2) as items:
                    assert [item async for item in items] == [0, 1, 2, 3, 4]
                    assert items.result == "counted"
        await transport.aclose()
        nursery.cancel_scope.cancel()

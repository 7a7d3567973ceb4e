"""The framed transport over a TLS stream (trio.SSLStream): no socket fast paths, the
same protocol. Certificates from trustme."""

from __future__ import annotations

import ssl
from functools import partial
from typing import Any

import pytest
import trio
import trustme

from spear_actors.errors import ErrorCode, SpearError
from spear_actors.protocol.calls import IncomingRequest
from spear_actors.protocol.handshake import accept_connection, open_connection
from spear_actors.protocol.messages import Hello
from spear_actors.protocol.transports import (
    SocketTransport,
    StreamTransport,
    Transport,
    open_transport,
    serve_endpoint,
    stream_transport,
)

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


@pytest.mark.parametrize("scheme", ["tls", "wss"])
async def test_tls_and_wss_endpoints(scheme: str, certificates: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_context, client_context = certificates

    async def on_transport(transport: Transport) -> None:
        async with accept_connection(transport, handler=echo) as connection:
            await connection.wait_closed()

    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(
            partial(serve_endpoint, f"{scheme}://127.0.0.1:0", on_transport, ssl_context=server_context)
        )
        assert endpoint.scheme == scheme and endpoint.port
        with trio.fail_after(PROMPTLY):
            async with (
                open_transport(endpoint, ssl_context=client_context) as transport,
                open_connection(transport, Hello()) as connection,
            ):
                assert await connection.request("echo", [1, "two"]) == [1, "two"]
            # a client that does not trust the server's certificate cannot connect
            with pytest.raises(SpearError) as info:
                async with open_transport(endpoint, ssl_context=ssl.create_default_context()):
                    pass
            assert info.value.code == ErrorCode.UNAVAILABLE
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("scheme", ["tls", "wss"])
async def test_a_tls_listener_needs_a_certificate(scheme: str) -> None:
    async def on_transport(transport: Transport) -> None:
        raise AssertionError("never called")

    with pytest.raises(SpearError) as info:
        await serve_endpoint(f"{scheme}://127.0.0.1:0", on_transport)
    assert info.value.code == ErrorCode.INVALID_ARGUMENT
    assert "needs a certificate and key" in info.value.message

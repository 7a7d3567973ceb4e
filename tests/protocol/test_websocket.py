"""The websocket connection (protocol/wsconnection.py) over real sockets: against
trio-websocket both ways, fragments, pings, the size limit, bad frames, a peer that
goes away mid-message, TLS, and HTTP requests that are not a websocket upgrade."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import hypothesis.strategies as st
import pytest
import trio
import trio_websocket
from hypothesis import HealthCheck, given, settings
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping

from spear_actors.errors import ErrorCode, SpearError
from spear_actors.protocol.framing import ProtocolError
from spear_actors.protocol.transports import Endpoint, Transport, WebsocketTransport, open_transport, serve_endpoint
from spear_actors.protocol.ws_transport import serve_websocket_stream
from spear_actors.protocol.wsconnection import WebsocketConnection

from ..conftest import open_sockets
from .peers import PROMPTLY

UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def echo_transport(transport: Transport) -> None:
    """Echo every body until the peer closes."""
    while (body := await transport.receive_body()) is not None:
        await transport.send_bodies([body])


@asynccontextmanager
async def ws_server(
    handler: partial[object] | object = echo_transport, *, max_frame_size: int | None = None, **kwargs: object
) -> AsyncIterator[Endpoint]:
    extra = {} if max_frame_size is None else {"max_frame_size": max_frame_size}
    async with trio.open_nursery() as nursery:
        yield await nursery.start(partial(serve_endpoint, "ws://127.0.0.1:0", handler, **extra, **kwargs))
        nursery.cancel_scope.cancel()


class RawPeer:
    """A websocket client made of a TCP stream and a wsproto connection, to send what
    a well-behaved library would not (fragments, bad frames, a close mid-message)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = Connection(ConnectionType.CLIENT)
        self.received = b""

    @classmethod
    async def connect(cls, port: int) -> RawPeer:
        peer = cls(await trio.open_tcp_stream("127.0.0.1", port))
        await peer.stream.send_all(UPGRADE)
        head = b""
        while b"\r\n\r\n" not in head:
            head += await peer.stream.receive_some()
        assert head.startswith(b"HTTP/1.1 101"), head
        peer.ws.receive_data(head.split(b"\r\n\r\n", 1)[1])
        return peer

    async def send(self, *events: BytesMessage | Ping | CloseConnection) -> None:
        await self.stream.send_all(b"".join(self.ws.send(event) for event in events))

    async def next_event(self) -> object:
        """The next event from the server; a CloseConnection once the server closed."""
        while True:
            for event in self.ws.events():
                return event
            data = await self.stream.receive_some()
            self.ws.receive_data(data or None)


# -- interoperability --------------------------------------------------------------------


async def test_a_trio_websocket_client_talks_to_our_server() -> None:
    async with ws_server() as endpoint:
        with trio.fail_after(PROMPTLY):
            async with trio_websocket.open_websocket(
                "127.0.0.1", endpoint.port, "/", use_ssl=False, max_message_size=1 << 24
            ) as ws:
                for size in (0, 1, 125, 126, 65535, 65536, 3 * 1024 * 1024):
                    await ws.send_message(b"m" * size)
                    assert await ws.get_message() == b"m" * size
                await ws.ping(b"are you there")  # returns once the pong arrived
            assert ws.closed is not None and ws.closed.code == 1000


async def test_our_client_talks_to_a_trio_websocket_server() -> None:
    closed: list[int | None] = []

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        assert await ws.get_message() == b"hello"
        await ws.ping(b"p")  # answered by the client while it waits for a message
        await ws.send_message(b"x" * 200_000)
        await ws.aclose(1008, "policy")
        closed.append(ws.closed.code if ws.closed else None)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None))
        with trio.fail_after(PROMPTLY):
            async with open_transport(f"ws://127.0.0.1:{server.port}") as transport:
                assert isinstance(transport, WebsocketTransport)
                await transport.send_bodies([b"hello"])
                assert await transport.receive_body() == b"x" * 200_000
                assert await transport.receive_body() is None
                assert transport.ws.closed is not None and transport.ws.closed.code == 1008
            while not closed:  # the server's close handshake completes too
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert closed == [1008]


async def test_a_trio_websocket_client_over_tls(certificates: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_context, client_context = certificates
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(
            partial(serve_endpoint, "wss://127.0.0.1:0", echo_transport, ssl_context=server_context)
        )
        with trio.fail_after(PROMPTLY):
            async with trio_websocket.open_websocket("127.0.0.1", endpoint.port, "/", use_ssl=client_context) as ws:
                await ws.send_message(b"s" * 100_000)
                assert await ws.get_message() == b"s" * 100_000
            # and our own client over wss
            async with open_transport(endpoint, ssl_context=client_context) as transport:
                await transport.send_bodies([b"one", b"two"])
                assert [await transport.receive_body(), await transport.receive_body()] == [b"one", b"two"]
        nursery.cancel_scope.cancel()


# -- frames the peer sends ----------------------------------------------------------------


async def test_fragments_and_a_ping_between_them_make_one_message() -> None:
    async with ws_server() as endpoint:
        peer = await RawPeer.connect(endpoint.port)
        async with peer.stream:
            with trio.fail_after(PROMPTLY):
                await peer.send(BytesMessage(data=b"ab", message_finished=False))
                await peer.send(Ping(payload=b"between"))
                await peer.send(BytesMessage(data=b"cd", message_finished=False))
                await peer.send(BytesMessage(data=b"ef", message_finished=True))
                pong = await peer.next_event()
                assert type(pong).__name__ == "Pong" and pong.payload == b"between"  # type: ignore[attr-defined]
                message = await peer.next_event()
                assert isinstance(message, BytesMessage) and message.data == b"abcdef"


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        # three fragments of 600 bytes: each frame passes, the message does not (1009)
        ([BytesMessage(data=b"f" * 600, message_finished=False)] * 2 + [BytesMessage(data=b"f" * 600)], 1009),
        # one frame over the limit, refused from its header by the frame guard (1009)
        ([BytesMessage(data=b"g" * 1025)], 1009),
    ],
)
async def test_a_message_over_the_size_limit_closes_with_1009(frames: list[BytesMessage], code: int) -> None:
    async with ws_server(max_frame_size=1024) as endpoint:
        peer = await RawPeer.connect(endpoint.port)
        async with peer.stream:
            with trio.fail_after(PROMPTLY):
                await peer.send(*frames)
                event = await peer.next_event()
        assert isinstance(event, CloseConnection) and event.code == code, event


@pytest.mark.parametrize(
    "frame",
    [
        b"\x83\x80mask",  # reserved opcode 0x3
        b"\xc2\x80mask",  # RSV1 without an extension that uses it
        b"\x82\x05hello",  # a client frame that is not masked
        b"\x09\x80mask",  # a ping that is not FIN (control frames cannot be fragmented)
        b"\x80\x80mask",  # a continuation with no message to continue
    ],
)
async def test_an_invalid_frame_closes_with_1002(frame: bytes) -> None:
    async with ws_server() as endpoint:
        peer = await RawPeer.connect(endpoint.port)
        async with peer.stream:
            with trio.fail_after(PROMPTLY):
                await peer.stream.send_all(frame)
                event = await peer.next_event()
        assert isinstance(event, CloseConnection) and event.code == 1002, event


@pytest.mark.parametrize("how", ["close frame", "dropped link"])
async def test_a_peer_that_goes_away_mid_message(how: str) -> None:
    outcomes: list[object] = []

    async def handler(transport: Transport) -> None:
        try:
            outcomes.append(await transport.receive_body())
        except SpearError as exc:
            outcomes.append(exc.code)
        assert isinstance(transport, WebsocketTransport)
        outcomes.append(transport.ws.closed)

    async with ws_server(handler) as endpoint:
        peer = await RawPeer.connect(endpoint.port)
        with trio.fail_after(PROMPTLY):
            await peer.send(BytesMessage(data=b"half", message_finished=False))
            if how == "close frame":
                await peer.send(CloseConnection(code=1000))
                event = await peer.next_event()
                # a close in the middle of a message is a protocol error
                assert isinstance(event, CloseConnection) and event.code == 1002
            await peer.stream.aclose()
            while len(outcomes) < 2:
                await trio.sleep(0.01)
    assert outcomes[0] in (None, ErrorCode.UNAVAILABLE)
    closed = outcomes[1]
    assert closed is not None and closed.code == (1002 if how == "close frame" else 1006)  # type: ignore[attr-defined]


async def test_a_text_message_is_a_protocol_error() -> None:
    async def handler(transport: Transport) -> None:
        with pytest.raises(ProtocolError):
            await transport.receive_body()
        got.set()

    got = trio.Event()
    async with (
        ws_server(handler) as endpoint,
        trio_websocket.open_websocket("127.0.0.1", endpoint.port, "/", use_ssl=False) as ws,
    ):
        await ws.send_message("text")
        with trio.fail_after(PROMPTLY):
            await got.wait()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    messages=st.lists(st.binary(max_size=3000), min_size=1, max_size=4),
    fragment=st.integers(min_value=1, max_value=700),
    cuts=st.lists(st.integers(min_value=1, max_value=4000), max_size=12),
)
async def test_messages_arrive_whole_however_frames_and_reads_are_cut(
    messages: list[bytes], fragment: int, cuts: list[int]
) -> None:
    """Each message sent as fragments of *fragment* bytes, with pings between them,
    the bytes written in pieces cut at *cuts*: the connection reads every message
    whole and in order, and answers every ping."""
    client = Connection(ConnectionType.CLIENT)
    wire = b""
    for message in messages:
        parts = [message[i : i + fragment] for i in range(0, len(message), fragment)] or [b""]
        for index, part in enumerate(parts):
            wire += client.send(BytesMessage(data=part, message_finished=index == len(parts) - 1))
            wire += client.send(Ping(payload=b"%d" % index))
    left, right = trio.socket.socketpair()
    server_side, client_side = trio.SocketStream(left), trio.SocketStream(right)
    async with client_side:
        ws: WebsocketConnection | None = None

        async def write() -> None:
            await client_side.send_all(UPGRADE)
            rest = wire
            for cut in cuts:
                await client_side.send_all(rest[:cut])
                rest = rest[cut:]
                await trio.sleep(0)
            await client_side.send_all(rest)
            await client_side.send_eof()

        with trio.fail_after(PROMPTLY):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write)
                ws = await serve_websocket_stream(server_side, 1 << 20)
                received = [await ws.receive_message() for _ in messages]
                # read to the end, so that closing leaves nothing unread (no reset)
                assert await ws.receive_message() is None
        assert received == messages
        await trio.aclose_forcefully(ws.stream)  # the pongs went as the pings came
        pongs = Connection(ConnectionType.CLIENT)
        data = b""
        with trio.move_on_after(PROMPTLY):
            while chunk := await client_side.receive_some():
                data += chunk
        pongs.receive_data(data.split(b"\r\n\r\n", 1)[1])
        names = [type(event).__name__ for event in pongs.events()]
        assert names.count("Pong") == sum(max(1, -(-len(m) // fragment)) for m in messages)


# -- the handshake ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"426"),  # plain HTTP
        (UPGRADE.replace(b"Version: 13", b"Version: 8"), b"400"),  # an old websocket version
        (UPGRADE.replace(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b""), b"400"),
        (b"this is not HTTP\r\n\r\n", b"400"),
    ],
)
async def test_a_request_that_is_not_a_websocket_upgrade_gets_an_http_status(
    request_bytes: bytes, status: bytes
) -> None:
    async with ws_server() as endpoint:
        stream = await trio.open_tcp_stream("127.0.0.1", endpoint.port)
        async with stream:
            await stream.send_all(request_bytes)
            answer = b""
            with trio.fail_after(PROMPTLY):
                while data := await stream.receive_some():
                    answer += data
        assert answer.startswith(b"HTTP/1.1 " + status), answer
        # and the listener still serves websocket clients
        async with trio_websocket.open_websocket("127.0.0.1", endpoint.port, "/", use_ssl=False) as ws:
            await ws.send_message(b"ok")
            assert await ws.get_message() == b"ok"


async def test_our_client_refused_by_a_plain_http_server_is_unavailable() -> None:
    async def http(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        await stream.send_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, http, 0)
        port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(PROMPTLY), pytest.raises(SpearError) as info:
            async with open_transport(f"ws://127.0.0.1:{port}"):
                pass
        assert info.value.code == ErrorCode.UNAVAILABLE and "404" in info.value.message
        nursery.cancel_scope.cancel()


async def test_closing_leaves_no_socket_open() -> None:
    before = open_sockets()
    async with ws_server() as endpoint:
        for _ in range(3):
            async with open_transport(endpoint) as transport:
                await transport.send_bodies([b"x"])
                assert await transport.receive_body() == b"x"
    assert open_sockets() == before


async def test_a_message_sent_with_the_upgrade_request_is_not_lost() -> None:
    async with ws_server() as endpoint:
        stream = await trio.open_tcp_stream("127.0.0.1", endpoint.port)
        async with stream:
            client = Connection(ConnectionType.CLIENT)
            await stream.send_all(UPGRADE + client.send(BytesMessage(data=b"early")))
            received = b""
            with trio.fail_after(PROMPTLY):
                while b"\r\n\r\n" not in received:
                    received += await stream.receive_some()
                head, _, rest = received.partition(b"\r\n\r\n")
                client.receive_data(rest)
                while not (events := list(client.events())):
                    client.receive_data(await stream.receive_some())
        assert head.startswith(b"HTTP/1.1 101")
        assert isinstance(events[0], BytesMessage) and events[0].data == b"early"


async def test_message_bytes_never_reach_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with ws_server() as endpoint, open_transport(endpoint) as transport:
        await transport.send_bodies([b"token=s3cr3t"])
        assert await transport.receive_body() == b"token=s3cr3t"
    for record in caplog.records:
        assert "s3cr3t" not in record.getMessage() + repr(record.args), record.getMessage()
        assert "73 33 63 72" not in record.getMessage(), record.getMessage()  # nor as hex


async def test_an_upgrade_request_with_too_many_headers_is_refused() -> None:
    headers = b"".join(b"X-Padding-%04d: %s\r\n" % (i, b"p" * 20) for i in range(200))
    async with ws_server() as endpoint:
        stream = await trio.open_tcp_stream("127.0.0.1", endpoint.port)
        async with stream:
            await stream.send_all(UPGRADE[:-2] + headers + b"\r\n")
            answer = b""
            with trio.fail_after(PROMPTLY):
                while data := await stream.receive_some():
                    answer += data
        assert answer.startswith(b"HTTP/1.1 400"), answer[:100]


async def test_a_text_message_that_is_not_utf8_closes_with_1007() -> None:
    async with ws_server() as endpoint:
        peer = await RawPeer.connect(endpoint.port)
        async with peer.stream:
            with trio.fail_after(PROMPTLY):
                # a masked text frame (mask 0: the payload as is) carrying \xff\xfe
                await peer.stream.send_all(b"\x81\x82\x00\x00\x00\x00\xff\xfe")
                event = await peer.next_event()
        assert isinstance(event, CloseConnection) and event.code == 1007, event

"""Writes over TLS that need not wait (tlssocket.py), on real TLS sockets: order and
integrity under concurrent senders, a peer that stops reading, a sender cancelled
in the middle of its write. Certificates from trustme."""

from __future__ import annotations

import hashlib
import itertools
import ssl
import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from spear_actors.protocol.calls import IncomingRequest
from spear_actors.protocol.handshake import accept_connection, open_connection
from spear_actors.protocol.messages import Hello, Request
from spear_actors.protocol.tlssocket import TlsSocketStream
from spear_actors.protocol.transports import Transport, WebsocketTransport, open_transport, serve_endpoint
from spear_actors.protocol.wsconnection import accept_websocket, connect_websocket
from spear_actors.protocol.wsguard import NowaitWriter

from ..conftest import open_sockets
from .peers import PROMPTLY, Raw, tls_contexts

MIB = 1024 * 1024
_HEAD = struct.Struct(">III")  # sender, sequence number, payload length


@asynccontextmanager
async def tls_pair(
    certificates: tuple[ssl.SSLContext, ssl.SSLContext],
) -> AsyncIterator[tuple[TlsSocketStream, TlsSocketStream]]:
    """(client, server): two ends of one TLS connection over a real TCP socket."""
    server_context, client_context = certificates
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    try:
        port = listeners[0].socket.getsockname()[1]
        tcp_client = await trio.open_tcp_stream("127.0.0.1", port)
        tcp_server = await listeners[0].accept()
    finally:
        await listeners[0].aclose()
    client = TlsSocketStream(tcp_client, client_context, server_hostname="127.0.0.1")
    server = TlsSocketStream(tcp_server, server_context, server_side=True)
    try:
        with trio.fail_after(PROMPTLY):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.do_handshake)
                nursery.start_soon(server.do_handshake)
        yield client, server
    finally:
        await trio.aclose_forcefully(client)
        await trio.aclose_forcefully(server)


def _payload(sender: int, sequence: int, size: int) -> bytes:
    seed = hashlib.sha256(f"{sender}/{sequence}".encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def _message(sender: int, sequence: int, size: int) -> bytes:
    return _HEAD.pack(sender, sequence, size) + _payload(sender, sequence, size)


async def _send(stream: TlsSocketStream, data: bytes) -> bool | None:
    """The transports' way: a write that does not wait when the stream allows it,
    else send_all. Returns what write_nowait said (None: it was not used)."""
    if stream.can_write_now:
        done = stream.write_nowait(data)
        if not done:
            await stream.flush()
        return done
    await stream.send_all(data)
    return None


async def _read_messages(
    stream: TlsSocketStream, count: int, reads: Sequence[int | None] = (None,)
) -> list[tuple[int, int, bytes]]:
    """*count* messages from *stream*, checked whole: (sender, sequence, payload);
    the reads ask for the sizes in *reads*, in turn."""
    sizes = itertools.cycle(reads)
    buffer = bytearray()
    messages: list[tuple[int, int, bytes]] = []
    while len(messages) < count:
        while len(buffer) >= _HEAD.size:
            sender, sequence, size = _HEAD.unpack_from(buffer)
            if len(buffer) < _HEAD.size + size:
                break
            payload = bytes(buffer[_HEAD.size : _HEAD.size + size])
            del buffer[: _HEAD.size + size]
            assert payload == _payload(sender, sequence, size), f"message {sender}/{sequence} corrupt"
            messages.append((sender, sequence, payload))
        if len(messages) < count:
            data = await stream.receive_some(next(sizes))
            assert data, "the stream ended early"
            buffer += data
    return messages


def _in_order(messages: list[tuple[int, int, bytes]], senders: int, each: int) -> None:
    for sender in range(senders):
        assert [sequence for who, sequence, _ in messages if who == sender] == list(range(each))


async def test_concurrent_senders_keep_order_and_integrity(certificates: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    senders, each = 6, 12
    sizes = [MIB if (sequence % 4 == 1) else 10 + sequence for sequence in range(each)]

    async def sender(stream: TlsSocketStream, who: int) -> None:
        for sequence, size in enumerate(sizes):
            await _send(stream, _message(who, sequence, size))
            if sequence % 3 == 0:
                await trio.lowlevel.checkpoint()  # let the others in between

    async with tls_pair(certificates) as (client, server):
        with trio.fail_after(PROMPTLY * 4):
            async with trio.open_nursery() as nursery:
                for who in range(senders):
                    nursery.start_soon(sender, client, who)
                messages = await _read_messages(server, senders * each)
    _in_order(messages, senders, each)


@settings(max_examples=25, deadline=None)
@given(
    senders=st.lists(
        st.lists(st.integers(min_value=0, max_value=200_000), min_size=1, max_size=4), min_size=1, max_size=4
    ),
    nowait=st.lists(st.booleans(), min_size=1, max_size=8),
    reads=st.lists(st.integers(min_value=1, max_value=70_000), min_size=1, max_size=6),
)
async def test_messages_stay_whole_and_in_order_however_sends_and_reads_go(
    senders: list[list[int]], nowait: list[bool], reads: list[int]
) -> None:
    """Senders each send their messages (sizes drawn), each one without waiting or
    with send_all (drawn), while the peer reads in pieces of drawn sizes: every
    message arrives whole, each sender's in its order."""

    async def sender(stream: TlsSocketStream, who: int, sizes: list[int]) -> None:
        for sequence, size in enumerate(sizes):
            data = _message(who, sequence, size)
            if nowait[(who + sequence) % len(nowait)]:
                await _send(stream, data)
            else:
                await stream.send_all(data)

    async with tls_pair(tls_contexts()) as (client, server):
        with trio.fail_after(PROMPTLY * 4):
            async with trio.open_nursery() as nursery:
                for who, sizes in enumerate(senders):
                    nursery.start_soon(sender, client, who, sizes)
                messages = await _read_messages(server, sum(map(len, senders)), reads)
    for who, sizes in enumerate(senders):
        assert [(sequence, len(payload)) for sender_, sequence, payload in messages if sender_ == who] == list(
            enumerate(sizes)
        )


async def test_a_peer_that_stops_reading_gets_everything_in_order_when_it_resumes(
    certificates: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    sizes = [5, 3 * MIB, 100, MIB, 7, 2 * MIB, 1]
    answers: list[bool | None] = []

    async def sender(stream: TlsSocketStream) -> None:
        for sequence, size in enumerate(sizes):
            answers.append(await _send(stream, _message(0, sequence, size)))

    async with tls_pair(certificates) as (client, server):
        with trio.fail_after(PROMPTLY * 4):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender, client)
                # the server reads nothing: the sender fills the socket and waits
                await trio.testing.wait_all_tasks_blocked()
                assert not client.can_write_now
                assert len(answers) < len(sizes)
                messages = await _read_messages(server, len(sizes))
    assert False in answers  # some write was partial, and its rest went first
    assert [len(payload) for _, _, payload in messages] == sizes
    _in_order(messages, 1, len(sizes))


async def test_a_sender_cancelled_mid_write_does_not_corrupt_the_stream(
    certificates: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    async with tls_pair(certificates) as (client, server):
        with trio.fail_after(PROMPTLY * 4):
            async with trio.open_nursery() as nursery:
                cancelled = trio.CancelScope()

                async def big_sender() -> None:
                    with cancelled:
                        await client.send_all(_message(0, 0, 4 * MIB))

                nursery.start_soon(big_sender)
                await trio.testing.wait_all_tasks_blocked()  # mid-write: the peer does not read
                cancelled.cancel()
                await trio.testing.wait_all_tasks_blocked()
                assert not client.can_write_now  # the rest of its records is kept
                nursery.start_soon(client.send_all, _message(1, 0, 10))
                messages = await _read_messages(server, 2)
            # then a clean close: the peer sees the end of the stream, not an error
            await client.aclose()
            assert await server.receive_some() == b""
    assert [(who, len(payload)) for who, _, payload in messages] == [(0, 4 * MIB), (1, 10)]


async def test_a_websocket_sender_cancelled_mid_message_leaves_whole_messages_then_a_clean_close(
    certificates: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """Over wss: a message whose send was cancelled arrives whole (its frame was
    encrypted already), the next one after it, then the close (1000)."""
    async with tls_pair(certificates) as (client, server):
        with trio.fail_after(PROMPTLY * 4):
            async with trio.open_nursery() as nursery:
                accepted: list[object] = []

                async def accept() -> None:
                    accepted.append(await accept_websocket(NowaitWriter(server), max_message_size=8 * MIB))

                nursery.start_soon(accept)
                ws = await connect_websocket(NowaitWriter(client), "127.0.0.1", max_message_size=8 * MIB)
            peer = accepted[0]
            assert hasattr(peer, "receive_message")
            async with trio.open_nursery() as nursery:
                cancelled = trio.CancelScope()

                async def big_sender() -> None:
                    with cancelled:
                        await ws.send_message(b"b" * (4 * MIB))

                nursery.start_soon(big_sender)
                await trio.testing.wait_all_tasks_blocked()  # mid-message: the peer does not read yet
                cancelled.cancel()
            assert cancelled.cancelled_caught

            async with trio.open_nursery() as nursery:

                async def after() -> None:
                    await ws.send_message(b"after")
                    await ws.aclose()

                nursery.start_soon(after)
                received = [await peer.receive_message() for _ in range(3)]  # type: ignore[attr-defined]
    assert received == [b"b" * (4 * MIB), b"after", None]
    assert peer.closed is not None and peer.closed.code == 1000  # type: ignore[attr-defined]


async def echo(request: IncomingRequest) -> object:
    return request.params


async def test_concurrent_requests_over_wss_come_back_whole(
    certificates: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """The node's own path over wss (requests and answers written without waiting,
    the rest by the writer task): big and small bodies interleaved, each answered
    with itself."""
    server_context, client_context = certificates

    async def on_transport(transport: Transport) -> None:
        async with accept_connection(transport, handler=echo) as connection:
            await connection.wait_closed()

    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(
            partial(serve_endpoint, "wss://127.0.0.1:0", on_transport, ssl_context=server_context)
        )
        with trio.fail_after(PROMPTLY * 4):
            async with (
                open_transport(endpoint, ssl_context=client_context) as transport,
                open_connection(transport, Hello()) as connection,
            ):
                assert isinstance(transport, WebsocketTransport) and transport.can_send_nowait
                answers: dict[int, object] = {}

                async def call(index: int) -> None:
                    body = _payload(index, 0, MIB if index % 5 == 0 else 50 + index)
                    answers[index] = (await connection.request("echo", body)) == body

                async with trio.open_nursery() as callers:
                    for index in range(30):
                        callers.start_soon(call, index)
        nursery.cancel_scope.cancel()
    assert answers == {index: True for index in range(30)}


@pytest.mark.parametrize("side", ["client", "server"])
async def test_a_failed_tls_handshake_is_a_broken_resource(
    certificates: tuple[ssl.SSLContext, ssl.SSLContext], side: str
) -> None:
    """A client that does not trust the server's certificate: both ends fail with
    BrokenResourceError (the SSL error as its cause), and close."""
    server_context, _ = certificates
    distrusting = ssl.create_default_context()  # no trust in the test CA
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    tcp_client = await trio.open_tcp_stream("127.0.0.1", port)
    tcp_server = await listeners[0].accept()
    await listeners[0].aclose()
    client = TlsSocketStream(tcp_client, distrusting, server_hostname="127.0.0.1")
    server = TlsSocketStream(tcp_server, server_context, server_side=True)
    failures: dict[str, BaseException] = {}

    async def handshake(name: str, stream: TlsSocketStream) -> None:
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            failures[name] = exc
        finally:
            await trio.aclose_forcefully(stream)

    with trio.fail_after(PROMPTLY):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(handshake, "client", client)
            nursery.start_soon(handshake, "server", server)
    assert isinstance(failures[side], trio.BrokenResourceError)
    if side == "client":
        assert isinstance(failures["client"].__cause__, ssl.SSLCertVerificationError)


async def test_closing_over_wss_leaves_no_socket_open_even_with_writes_stuck(
    certificates: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """Connections over wss closed normally, and one closed while the server's answer
    is stuck in a full socket (the client stopped reading): no socket left open."""
    server_context, client_context = certificates
    before = open_sockets()

    async def on_transport(transport: Transport) -> None:
        async with accept_connection(transport, handler=echo) as connection:
            await connection.wait_closed()

    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(
            partial(serve_endpoint, "wss://127.0.0.1:0", on_transport, ssl_context=server_context)
        )
        with trio.fail_after(PROMPTLY * 4):
            for _ in range(2):
                async with open_transport(endpoint, ssl_context=client_context) as transport:
                    await transport.send_bodies([b"x"])
                async with (
                    open_transport(endpoint, ssl_context=client_context) as transport,
                    open_connection(transport, Hello()) as connection,
                ):
                    assert await connection.request("echo", "ping") == "ping"
            # the client reads nothing more: the answers fill the socket, then the
            # server stops reading and the client's own send is stuck too (given up)
            async with open_transport(endpoint, ssl_context=client_context) as transport:
                raw = Raw(transport)
                await raw.hello()
                with trio.move_on_after(0.5):
                    await raw.send(*[Request(i, "echo", b"a" * MIB) for i in range(1, 17)])
        nursery.cancel_scope.cancel()
    assert open_sockets() == before


async def test_two_tasks_receiving_at_once_is_an_error(certificates: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    async with tls_pair(certificates) as (client, server):
        with trio.fail_after(PROMPTLY):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.receive_some)
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(trio.BusyResourceError):
                    await server.receive_some()
                await client.send_all(b"for the first one")

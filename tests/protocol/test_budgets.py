"""What one peer may hold of a connection, over real transports (issue 12): bytes of
requests in service, answers it does not read, and how a websocket says why it closed."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from spear_actors.errors import ErrorCode
from spear_actors.protocol.calls import IncomingRequest
from spear_actors.protocol.connection import ConnectionConfig
from spear_actors.protocol.handshake import token_authenticator
from spear_actors.protocol.messages import Error, Hello, Request, Response
from spear_actors.protocol.transports import WebsocketTransport

from .peers import PROMPTLY, Raw, raw_client, serving

KIB = 1024
MIB = 1024 * KIB


async def test_requests_over_the_byte_budget_are_left_unread(url: str) -> None:
    gate = trio.Event()

    async def handler(request: IncomingRequest) -> Any:
        await gate.wait()
        return len(request.params)

    config = ConnectionConfig(max_bytes_in_service=1 * MIB)
    async with serving(url, handler, config=config) as server, raw_client(server) as raw:
        await raw.hello()
        async with trio.open_nursery() as nursery:
            # 8 requests of 512 KiB: the node reads until it holds more than 1 MiB
            nursery.start_soon(raw.send, *(Request(i, "size", b"r" * (512 * KIB)) for i in range(1, 9)))
            with trio.fail_after(PROMPTLY):
                while not server.connections or server.connections[0].in_service < 2:
                    await trio.sleep(0.01)
            await trio.testing.wait_all_tasks_blocked(cushion=0.1)
            connection = server.connections[0]
            assert connection.in_service == 2  # just over 1 MiB: over the budget, reading stopped
            assert connection.bytes_in_service > 1 * MIB
            gate.set()  # answered, the budget frees up and the rest is read
            with trio.fail_after(PROMPTLY):
                answers = [await raw.receive_skipping_pings() for _ in range(8)]
        assert sorted(a.id for a in answers if isinstance(a, Response)) == list(range(1, 9))


async def test_a_client_that_stops_reading_is_dead_after_the_heartbeat_timeout(
    url: str, autojump_clock: trio.testing.MockClock
) -> None:
    async def handler(request: IncomingRequest) -> Any:
        return b"x" * MIB

    config = ConnectionConfig(heartbeat_interval=1.0, heartbeat_timeout=5.0)
    async with serving(url, handler, config=config) as server:
        async with raw_client(server) as raw:
            await raw.hello()
            # 16 MiB of answers, and from now on this client neither reads nor sends
            await raw.send(*(Request(i, "big") for i in range(1, 17)))
            with trio.move_on_after(60):
                while server.finished < 1:
                    await trio.sleep(0.5)
            closed_at = trio.current_time()
        assert server.finished == 1, "the connection of a client that does not read is still open"
        reason = server.connections[0].close_reason
        assert reason is not None and reason.code == ErrorCode.UNAVAILABLE
        assert "heartbeat timeout" in reason.message
        # 5 s of heartbeat timeout, a ping interval, and the close's own graces (the
        # websocket close handshake waits for a peer that does not read); virtual time
        assert closed_at < 20


@pytest.mark.parametrize(
    ("case", "code"),
    [("protocol error", 1002), ("wrong token", 1008), ("no hello", 1008)],
)
async def test_websocket_close_codes(case: str, code: int, autojump_clock: trio.testing.MockClock) -> None:
    async def handler(request: IncomingRequest) -> Any:
        return None

    async with (
        serving("ws://127.0.0.1:0", handler, authenticator=token_authenticator("t0ken")) as server,
        raw_client(server) as raw,
    ):
        assert isinstance(raw.transport, WebsocketTransport)
        if case == "protocol error":
            await raw.hello(Hello(auth="t0ken"))
            await raw.transport.send_bodies([b"\xc1"])
        elif case == "wrong token":
            await raw.send(Hello(auth="wrong"))
        answer = await _first_error(raw)
        assert await raw.receive() is None
        assert raw.transport.ws.closed is not None
        assert raw.transport.ws.closed.code == code, (answer, raw.transport.ws.closed)


async def _first_error(raw: Raw) -> Error:
    answer = await raw.receive_skipping_pings()
    assert isinstance(answer, Error), answer
    return answer


@pytest.mark.parametrize("announced", [17 * MIB, 2**63 - 1])
async def test_an_oversized_websocket_frame_is_refused_from_its_header(announced: int) -> None:
    async def handler(request: IncomingRequest) -> Any:
        return None

    async with serving("ws://127.0.0.1:0", handler) as server:
        assert server.endpoint is not None
        stream = await trio.open_tcp_stream("127.0.0.1", server.endpoint.port)
        async with stream:
            upgrade = (
                "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            await stream.send_all(upgrade.encode())
            received = b""
            with trio.fail_after(PROMPTLY):
                while b"\r\n\r\n" not in received:
                    received += await stream.receive_some()
                assert received.startswith(b"HTTP/1.1 101")
                # a binary frame announcing `announced` bytes (masked, 64-bit length),
                # and only 3 bytes of it
                await stream.send_all(b"\x82\xff" + announced.to_bytes(8, "big") + b"mask" + b"abc")
                rest = received.split(b"\r\n\r\n", 1)[1]
                while (data := await stream.receive_some()) != b"":
                    rest += data
        assert rest == b"\x88\x02\x03\xf1"  # close, code 1009 (message too big)
        # the listener still serves others
        async with raw_client(server) as raw:
            with trio.fail_after(PROMPTLY):
                await raw.hello()

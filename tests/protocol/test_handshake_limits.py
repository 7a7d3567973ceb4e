"""The handshake's limits over real transports: the pre-authentication hello size,
and the opener's own max_frame_size announced in its hello."""

from __future__ import annotations

import struct
from typing import Any

import trio

from spear_actors.errors import ErrorCode, SpearError
from spear_actors.protocol.calls import IncomingRequest
from spear_actors.protocol.connection import ConnectionConfig
from spear_actors.protocol.core import MAX_HELLO_SIZE
from spear_actors.protocol.messages import Error, Hello, encode_message
from spear_actors.protocol.transports import StreamTransport

from .peers import PROMPTLY, connected, raw_client, serving


async def echo(request: IncomingRequest) -> Any:
    """``big`` returns that many bytes; anything else echoes its params."""
    if request.method == "big":
        return b"x" * request.params
    return request.params


async def test_a_hello_over_8_kib_is_refused_before_its_bytes_arrive(url: str) -> None:
    async with serving(url, echo) as server:
        async with raw_client(server) as raw:
            with trio.fail_after(PROMPTLY):
                if isinstance(raw.transport, StreamTransport):
                    # only the header of a 64 KiB hello: refused from it alone
                    await raw.transport.stream.send_all(struct.pack("<Q", 64 * 1024))
                else:
                    big = Hello(meta={"padding": "x" * MAX_HELLO_SIZE})
                    await raw.transport.send_bodies([encode_message(big)])
                answer = await raw.receive()
        assert isinstance(answer, Error)
        assert (answer.id, answer.code) == (None, ErrorCode.PROTOCOL_ERROR.value)
        assert "exceeds the maximum of 8192" in answer.message
        # a hello within the limit is welcome, and frames after it may be big again
        async with connected(server, Hello(meta={"padding": "x" * 4000})) as connection:
            with trio.fail_after(PROMPTLY):
                assert await connection.request("echo", b"y" * 100_000) == b"y" * 100_000


async def test_the_accepter_sends_no_body_over_the_openers_announced_limit(url: str) -> None:
    async with serving(url, echo) as server, connected(server, config=ConnectionConfig(max_frame_size=4096)) as c:
        with trio.fail_after(PROMPTLY):
            assert await c.request("echo", "small") == "small"
            # the answer would be a frame the client said it does not take: the node
            # answers RESOURCE_EXHAUSTED instead, and the connection stays up
            try:
                await c.request("big", 5000)
            except SpearError as exc:
                assert exc.code == ErrorCode.RESOURCE_EXHAUSTED, exc
            else:
                raise AssertionError("a 5 KB answer went over a 4 KiB limit")
            assert await c.request("echo", "still up") == "still up"

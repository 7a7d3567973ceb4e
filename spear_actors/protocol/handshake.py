"""The hello/welcome handshake, and the two ways to get an open connection.

:func:`open_connection` is the side that dialed (it says hello);
:func:`accept_connection` is the side that accepted (it authenticates the hello
and welcomes the peer). Both yield a running :class:`~.connection.Connection`
and close it when the block ends.
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import trio

from .._nursery import background_nursery
from ..errors import ErrorCode, SpearError
from .calling import _ms
from .calls import Handler
from .connection import Connection, ConnectionConfig
from .core import MAX_HELLO_SIZE, check_hello, check_welcome
from .framing import ProtocolError
from .messages import Error, Hello, Message, Welcome, decode_message, encode_message
from .transports import StreamTransport, Transport

__all__ = ["Authenticator", "accept_connection", "open_connection", "token_authenticator"]

_REFUSAL_GRACE: Final = 0.5

Authenticator = Callable[[Hello], Awaitable[Any]]
"""Checks a hello; returns the peer's identity or raises :class:`SpearError` UNAUTHENTICATED."""


def token_authenticator(token: str) -> Authenticator:
    """An authenticator that accepts a hello whose ``auth`` equals *token* (constant time)."""
    expected = token.encode()

    async def authenticate(hello: Hello) -> str:
        given = (hello.auth or "").encode()
        if not hmac.compare_digest(given, expected):
            raise SpearError(ErrorCode.UNAUTHENTICATED, "missing or wrong token in hello")
        return hello.peer_id or hello.role

    return authenticate


@asynccontextmanager
async def _running(connection: Connection) -> AsyncIterator[Connection]:
    """Run the connection's tasks beside the caller's block: the block's own
    exceptions come out unwrapped, and a dying connection never cancels it."""
    async with background_nursery() as nursery:
        await nursery.start(connection._run)
        try:
            yield connection
        finally:
            await connection.aclose()


async def _receive_handshake(transport: Transport, timeout: float, expecting: str, limit: int | None = None) -> Message:
    with trio.move_on_after(timeout):
        body = await transport.receive_body()
        if body is None:
            raise SpearError(ErrorCode.UNAVAILABLE, f"peer closed before sending {expecting}")
        if limit is not None and len(body) > limit:
            raise ProtocolError(f"{expecting} of {len(body)} bytes exceeds the maximum of {limit}")
        return decode_message(body)
    raise SpearError(ErrorCode.DEADLINE_EXCEEDED, f"no {expecting} within {timeout:g}s")


async def _receive_hello(transport: Transport, config: ConnectionConfig) -> Message:
    """The hello, read with a frame limit of :data:`MAX_HELLO_SIZE` (nothing bigger is
    buffered before the peer has authenticated), then the configured limit again."""
    decoder = transport.decoder if isinstance(transport, StreamTransport) else None
    limit = decoder.max_frame_size if decoder is not None else 0
    if decoder is not None:
        decoder.max_frame_size = min(limit, MAX_HELLO_SIZE)
    try:
        return await _receive_handshake(transport, config.handshake_timeout, "hello", MAX_HELLO_SIZE)
    finally:
        if decoder is not None:
            decoder.max_frame_size = limit


@asynccontextmanager
async def open_connection(
    transport: Transport,
    hello: Hello,
    *,
    config: ConnectionConfig | None = None,
    handler: Handler | None = None,
) -> AsyncIterator[Connection]:
    """The opening side: send *hello*, wait for the welcome, yield the connection.

    Raises the peer's refusal (e.g. UNAUTHENTICATED) as :class:`SpearError`.
    """
    config = dataclasses.replace(config) if config else ConnectionConfig()
    if hello.max_frame_size is None:
        hello.max_frame_size = config.max_frame_size
    await transport.send_bodies([encode_message(hello)])
    reply = check_welcome(await _receive_handshake(transport, config.handshake_timeout, "welcome"))
    # A peer's zero would make us ping in a tight loop: 10 ms is the floor.
    config.heartbeat_interval = max(reply.heartbeat_interval_ms, 10) / 1000
    config.heartbeat_timeout = max(reply.heartbeat_timeout_ms, 10) / 1000
    config.max_frame_size = min(config.max_frame_size, reply.max_frame_size)
    async with _running(Connection(transport, config, handler=handler, peer=reply)) as connection:
        yield connection


@asynccontextmanager
async def accept_connection(
    transport: Transport,
    *,
    authenticator: Authenticator | None = None,
    config: ConnectionConfig | None = None,
    handler: Handler | None = None,
    welcome: Welcome | None = None,
) -> AsyncIterator[Connection]:
    """The accepting side: wait for a hello, authenticate it, welcome the peer.

    A peer that sends no hello in time, speaks another version or fails the
    authenticator gets an error message and is closed; the refusal is raised
    as :class:`SpearError`.
    """
    config = config or ConnectionConfig()
    try:
        hello = check_hello(await _receive_hello(transport, config))
        identity = await authenticator(hello) if authenticator is not None else None
    except SpearError as exc:
        transport.closing_because(exc)
        with trio.move_on_after(_REFUSAL_GRACE):
            try:
                await transport.send_bodies([encode_message(Error.from_exception(None, exc))])
            except SpearError:
                pass
        raise
    answer = welcome or Welcome()
    answer.heartbeat_interval_ms = _ms(config.heartbeat_interval) or 1
    answer.heartbeat_timeout_ms = _ms(config.heartbeat_timeout) or 1
    answer.max_frame_size = config.max_frame_size
    await transport.send_bodies([encode_message(answer)])
    connection = Connection(
        transport,
        config,
        handler=handler,
        peer=hello,
        identity=identity,
        peer_max_frame_size=min(hello.max_frame_size or config.max_frame_size, config.max_frame_size),
    )
    async with _running(connection) as connection:
        yield connection

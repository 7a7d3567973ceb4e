"""The websocket transport (one binary message per body) and how a client opens a
``ws://`` / ``wss://`` one and a listener serves ``ws://`` / ``wss://``, over
:class:`~.wsconnection.WebsocketConnection` (wsproto driven from the reading task).
"""

from __future__ import annotations

import socket as stdlib_socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import trio

from ..errors import ErrorCode, SpearError
from .dialing import dial_tcp
from .endpoints import Endpoint, _host, _reason
from .framing import ProtocolError
from .tlssocket import TlsSocketStream
from .transport_base import Transport, TransportHandler, _lost, _run_handler
from .wsconnection import HandshakeFailed, WebsocketClosing, WebsocketConnection, accept_websocket, connect_websocket
from .wsguard import FrameGuard, NowaitWriter

__all__ = [
    "WS_NORMAL",
    "WS_POLICY_VIOLATION",
    "WS_PROTOCOL_ERROR",
    "WS_TOO_BIG",
    "WebsocketTransport",
]

WS_HANDSHAKE_TIMEOUT: Final = 10.0
"""How long a websocket client has to send its HTTP upgrade request."""

# RFC 6455 §7.4.1 close codes for why a node closes a websocket (docs/protocol.md §1.2).
WS_NORMAL: Final = 1000
WS_PROTOCOL_ERROR: Final = 1002
WS_POLICY_VIOLATION: Final = 1008
WS_TOO_BIG: Final = 1009
_WS_CLOSE_CODES: Final = {
    ErrorCode.PROTOCOL_ERROR: WS_PROTOCOL_ERROR,
    ErrorCode.UNAUTHENTICATED: WS_POLICY_VIOLATION,
    ErrorCode.PERMISSION_DENIED: WS_POLICY_VIOLATION,
    ErrorCode.DEADLINE_EXCEEDED: WS_POLICY_VIOLATION,
    ErrorCode.RESOURCE_EXHAUSTED: WS_TOO_BIG,
}


class WebsocketTransport(Transport):
    """One binary websocket message per body."""

    def __init__(self, ws: WebsocketConnection, *, description: str = "websocket") -> None:
        self.ws = ws
        """The websocket connection (its ``closed`` says how it closed)."""
        self.description = description
        self._close_code = WS_NORMAL
        self._close_reason = ""
        self._guard = ws.stream if ws.stream.can_write_now else None
        self._kept: list[bytes] = []  # bodies send_nowait could not write: they go first

    @property
    def can_send_nowait(self) -> bool:
        """Whether :meth:`send_nowait` can write at all: over a plain socket."""
        return self._guard is not None

    def send_nowait(self, bodies: list[bytes]) -> bool:
        """Write *bodies* now, each as one binary message, when nothing else is being
        sent; True when all of it went. Otherwise what did not go (bodies, or the rest
        of the bytes) is kept and goes first on the next :meth:`send_bodies`. Raises
        :class:`SpearError` UNAVAILABLE if the link is gone."""
        guard = self._guard
        if self._kept or guard is None or not guard.can_write_now:
            self._kept.extend(bodies)
            return False
        ws = self.ws
        try:
            data = ws.encode(bodies[0]) if len(bodies) == 1 else b"".join([ws.encode(body) for body in bodies])
        except WebsocketClosing:  # closing: send_bodies reports it
            self._kept.extend(bodies)
            return False
        try:
            return bool(guard.write_nowait(data))
        except OSError as exc:
            raise _lost("sending", exc) from None

    def closing_because(self, error: SpearError) -> None:
        if self._close_code == WS_NORMAL:
            self._close_code = _WS_CLOSE_CODES.get(error.code, WS_NORMAL)
            self._close_reason = error.message[:120]  # a close frame carries 123 bytes at most

    async def send_bodies(self, bodies: list[bytes]) -> None:
        if self._kept:
            bodies, self._kept = [*self._kept, *bodies], []
        ws = self.ws
        try:
            if not bodies:
                await ws.stream.flush()
                return
            data = b"".join([ws.encode(body) for body in bodies])
            await ws.stream.send_all(data)
        except WebsocketClosing:
            raise SpearError(ErrorCode.UNAVAILABLE, "connection lost while sending: the websocket is closed") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise _lost("sending", exc) from None

    async def receive_body(self) -> bytes | None:
        try:
            message = await self.ws.receive_message()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise _lost("receiving", exc) from None
        if type(message) is bytes or message is None:
            return message
        if isinstance(message, str):
            raise ProtocolError("text websocket message received; the protocol uses binary messages")
        return message

    async def aclose(self) -> None:
        reason = self._close_reason.encode()[:120].decode(errors="ignore")
        await self.ws.aclose(self._close_code, reason)


async def _connect(
    stream: trio.abc.Stream, endpoint: Endpoint, max_frame_size: int, connect_timeout: float
) -> WebsocketConnection:
    try:
        with trio.fail_after(connect_timeout):
            return await connect_websocket(
                NowaitWriter(stream), f"{_host(endpoint.host)}:{endpoint.port}", "/", max_message_size=max_frame_size
            )
    except (HandshakeFailed, trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
        await trio.aclose_forcefully(stream)
        raise SpearError(ErrorCode.UNAVAILABLE, f"cannot connect to {endpoint}: {_reason(exc)}") from None


@asynccontextmanager
async def open_websocket_transport(
    endpoint: Endpoint, ssl_context: ssl.SSLContext | None, max_frame_size: int, connect_timeout: float
) -> AsyncIterator[Transport]:
    """A client websocket to *endpoint* (``wss://`` with *ssl_context*: its TLS
    handshake first, so that a refused certificate fails at once); closed on exit.
    A refused or unreachable endpoint, a failed TLS or websocket handshake is
    :class:`SpearError` UNAVAILABLE; errors of the caller's block pass through."""
    try:
        with trio.fail_after(connect_timeout):
            context = ssl_context
            wrap = (
                None if context is None else (lambda tcp: TlsSocketStream(tcp, context, server_hostname=endpoint.host))
            )
            stream = await dial_tcp(endpoint, wrap)
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        raise SpearError(ErrorCode.UNAVAILABLE, f"cannot connect to {endpoint}: {_reason(exc)}") from None
    ws = await _connect(stream, endpoint, max_frame_size, connect_timeout)
    transport = WebsocketTransport(ws, description=str(endpoint))
    try:
        yield transport
    finally:
        await transport.aclose()


async def serve_websocket_stream(
    stream: trio.abc.Stream,
    max_frame_size: int,
    *,
    handshake_timeout: float = WS_HANDSHAKE_TIMEOUT,
) -> WebsocketConnection:
    """The server's side of a websocket on an accepted *stream* (TLS handshake
    first, if it is a :class:`~.tlssocket.TlsSocketStream` or a ``trio.SSLStream``;
    then the HTTP upgrade), behind a
    :class:`FrameGuard` (an oversized frame is refused from its header, 1009).
    Raises :class:`HandshakeFailed`, ``trio.TooSlowError`` (after
    *handshake_timeout*), ``trio.BrokenResourceError`` or :class:`OSError`; the
    caller closes *stream* then."""
    with trio.fail_after(handshake_timeout):
        if isinstance(stream, (TlsSocketStream, trio.SSLStream)):
            await stream.do_handshake()
        return await accept_websocket(FrameGuard(stream, max_frame_size), max_message_size=max_frame_size)


async def _serve_websocket(
    endpoint: Endpoint,
    handler: TransportHandler,
    max_frame_size: int,
    ssl_context: ssl.SSLContext | None,
    task_status: trio.TaskStatus[Endpoint],
) -> None:
    async def on_stream(tcp: trio.SocketStream) -> None:
        tcp.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)
        stream: trio.abc.Stream = tcp
        if ssl_context is not None:
            stream = TlsSocketStream(tcp, ssl_context, server_side=True)
        try:
            ws = await serve_websocket_stream(stream, max_frame_size)
        except (HandshakeFailed, trio.TooSlowError, trio.BrokenResourceError, OSError):
            await trio.aclose_forcefully(stream)
            return
        transport = WebsocketTransport(ws, description=str(endpoint))
        try:
            await _run_handler(handler, transport)
        finally:
            await transport.aclose()

    listeners = await trio.open_tcp_listeners(endpoint.port, host=endpoint.host)
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, on_stream, listeners)
        task_status.started(Endpoint(endpoint.scheme, host=endpoint.host, port=port))

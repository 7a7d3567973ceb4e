"""The websocket transport (one binary message per body) and how a client opens a
``wss://`` one and a listener serves ``ws://`` / ``wss://``.
"""

from __future__ import annotations

import socket as stdlib_socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import trio
import trio_websocket
from wsproto.events import BytesMessage
from wsproto.utilities import LocalProtocolError

from ..errors import ErrorCode, SpearError
from .endpoints import Endpoint, _host, _reason
from .framing import ProtocolError
from .transport_base import Transport, TransportHandler, _lost, _run_handler
from .wsguard import GuardedListener, NowaitWriter

__all__ = [
    "WS_NORMAL",
    "WS_POLICY_VIOLATION",
    "WS_PROTOCOL_ERROR",
    "WS_TOO_BIG",
    "WebsocketTransport",
]

_WS_QUEUE: Final = 64

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

    def __init__(self, ws: trio_websocket.WebSocketConnection, *, description: str = "websocket") -> None:
        self.ws = ws
        self.description = description
        self._close_code = WS_NORMAL
        self._close_reason = ""
        stream = getattr(ws, "_stream", None)
        self._guard = stream if isinstance(stream, NowaitWriter) and stream.can_write_now else None
        self._kept: list[bytes] = []  # bodies send_nowait could not write: they go first

    @property
    def can_send_nowait(self) -> bool:
        """Whether :meth:`send_nowait` can write at all: over a plain socket, behind
        a :class:`NowaitWriter` (the server's :class:`FrameGuard` is one)."""
        return self._guard is not None

    def send_nowait(self, bodies: list[bytes]) -> bool:
        """Write *bodies* now, each as one binary message made by trio-websocket's
        own wsproto connection, when nothing else is being sent; True when all of it
        went. Otherwise what did not go (bodies, or the rest of the bytes) is kept
        and goes first on the next :meth:`send_bodies`. Raises :class:`SpearError`
        UNAVAILABLE if the link is gone."""
        guard = self._guard
        ws = self.ws
        if (
            self._kept
            or guard is None
            or ws._close_reason is not None
            or ws._stream_lock.locked()
            or not guard.can_write_now
        ):
            self._kept.extend(bodies)
            return False
        try:
            data = b"".join([ws._wsproto.send(BytesMessage(data=body)) for body in bodies])
        except LocalProtocolError:  # closing: send_bodies reports it
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
        try:
            if self._guard is not None:
                await self._guard.flush()
            for body in bodies:
                await self.ws.send_message(body)
        except trio_websocket.ConnectionClosed as exc:
            raise _lost("sending", exc) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise _lost("sending", exc) from None

    async def receive_body(self) -> bytes | None:
        try:
            message = await self.ws.get_message()
        except trio_websocket.ConnectionClosed:
            return None
        if isinstance(message, str):
            raise ProtocolError("text websocket message received; the protocol uses binary messages")
        return message

    async def aclose(self) -> None:
        with trio.move_on_after(0.5) as scope:
            scope.shield = True
            try:
                await self.ws.aclose(self._close_code, self._close_reason.encode()[:120].decode(errors="ignore"))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        # trio-websocket does not close a client's TCP stream when the server closed
        # first or the link broke (it waits for a TCP close that it never acts on):
        # close it here, or the socket leaks (ResourceWarning).
        stream: trio.abc.Stream | None = getattr(self.ws, "_stream", None)
        if stream is not None:
            await trio.aclose_forcefully(stream)


@asynccontextmanager
async def _open_wss_transport(
    endpoint: Endpoint, ssl_context: ssl.SSLContext, max_frame_size: int, connect_timeout: float
) -> AsyncIterator[Transport]:
    """A websocket over a TLS stream whose handshake is done first: trio-websocket
    does it lazily, and when it fails (an untrusted certificate) waits for its connect
    timeout and leaves the socket open."""
    try:
        with trio.fail_after(connect_timeout):
            tcp = await trio.open_tcp_stream(endpoint.host, endpoint.port)
            tls = trio.SSLStream(tcp, ssl_context, server_hostname=endpoint.host, https_compatible=True)
            try:
                await tls.do_handshake()
            except BaseException:
                await trio.aclose_forcefully(tcp)
                raise
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        raise SpearError(ErrorCode.UNAVAILABLE, f"cannot connect to {endpoint}: {_reason(exc)}") from None
    tcp.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)
    try:
        async with trio.open_nursery() as nursery:  # the websocket's reader task
            try:
                with trio.fail_after(connect_timeout):
                    ws = await trio_websocket.wrap_client_stream(
                        nursery,
                        tls,
                        f"{_host(endpoint.host)}:{endpoint.port}",
                        "/",
                        message_queue_size=_WS_QUEUE,
                        max_message_size=max_frame_size,
                    )
            except (trio.TooSlowError, trio_websocket.HandshakeError, trio_websocket.ConnectionClosed) as exc:
                await trio.aclose_forcefully(tls)
                nursery.cancel_scope.cancel()
                raise SpearError(ErrorCode.UNAVAILABLE, f"cannot connect to {endpoint}: {exc!r}") from None
            transport = WebsocketTransport(ws, description=str(endpoint))
            try:
                yield transport
            finally:
                await transport.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # the reader task ends quietly: what is in the group is the caller's error
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


async def _serve_websocket(
    endpoint: Endpoint,
    handler: TransportHandler,
    max_frame_size: int,
    ssl_context: ssl.SSLContext | None,
    task_status: trio.TaskStatus[Endpoint],
) -> None:
    async def on_request(request: trio_websocket.WebSocketRequest) -> None:
        try:
            ws = await request.accept()
        except trio_websocket.ConnectionClosed:
            return
        transport = WebsocketTransport(ws, description=str(endpoint))
        try:
            await _run_handler(handler, transport)
        finally:
            await transport.aclose()

    sockets = await trio.open_tcp_listeners(endpoint.port, host=endpoint.host)
    port = sockets[0].socket.getsockname()[1]
    listeners: list[trio.abc.Listener[trio.abc.Stream]] = []
    for listener in sockets:
        inner: trio.abc.Listener[trio.abc.Stream] = listener
        if ssl_context is not None:
            inner = trio.SSLListener(listener, ssl_context, https_compatible=True)
        # an oversized frame is refused from its header (wsguard.py)
        listeners.append(GuardedListener(inner, max_frame_size))
    async with trio.open_nursery() as nursery:
        server = trio_websocket.WebSocketServer(
            on_request,
            listeners,  # type: ignore[arg-type]  # typed for socket listeners; it only calls accept()
            handler_nursery=nursery,
            message_queue_size=_WS_QUEUE,
            max_message_size=max_frame_size,
            connect_timeout=10.0,
            disconnect_timeout=1.0,
        )
        await nursery.start(server.run)
        task_status.started(Endpoint(endpoint.scheme, host=endpoint.host, port=port))

"""Accepting connections on one endpoint (ws://, wss://, tcp://, tls://, unix://).

The gateway owns its accept loops (rather than one ``serve_endpoint`` call per URL)
so that a drain can stop accepting while the connections already open carry on, and
so that every accepted socket — a websocket's too, before its HTTP upgrade — is
counted against the connection limit and refused before any protocol work.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket as stdlib_socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import trio

from ..errors import ErrorCode, SpearError
from ..protocol.framing import DEFAULT_MAX_FRAME_SIZE
from ..protocol.messages import Error, encode_message
from ..protocol.transports import (
    Endpoint,
    Transport,
    WebsocketTransport,
    open_unix_listener,
    parse_endpoint,
    stream_transport,
)
from ..protocol.ws_transport import serve_websocket_stream
from ..protocol.wsconnection import HandshakeFailed
from .bytecount import ByteCounts
from .refusals import RefusalLog

__all__ = ["Admission", "listen"]

_ACCEPT_PAUSE: Final = 0.1
"""After accept fails for lack of descriptors or memory: wait this long, then retry."""
_OUT_OF_RESOURCES: Final = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

ServeTransport = Callable[[Transport, str], Awaitable[None]]
"""Serves one admitted connection: its transport and the peer's address."""


class Admission(Protocol):
    """Asked for each accepted socket before anything is read from it."""

    def admit(self, address: str) -> Error | None:
        """None to serve a socket from *address* (it then counts until
        :meth:`release`), else the error to refuse it with."""

    def release(self, address: str) -> None:
        """An admitted connection from *address* has ended."""


async def listen(
    url: str,
    *,
    serve: ServeTransport,
    admission: Admission,
    refusals: RefusalLog,
    connections: trio.Nursery,
    ssl_context: ssl.SSLContext | None = None,
    byte_counts: ByteCounts | None = None,
    task_status: trio.TaskStatus[Endpoint] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept on *url* until cancelled; each admitted connection is served by *serve*
    in the *connections* nursery (which outlives this listener: cancelling the
    listener stops accepting and nothing else). ``tls://`` and ``wss://`` need
    *ssl_context*; their TLS handshake runs within the hello's (or the websocket
    upgrade's) time limit, on the connection's own task."""
    endpoint = parse_endpoint(url)
    secure = endpoint.scheme in ("tls", "wss")
    if secure and ssl_context is None:
        raise SpearError(
            ErrorCode.INVALID_ARGUMENT, f"{endpoint.scheme}:// listener {endpoint} needs a certificate and key"
        )
    try:
        if endpoint.scheme != "unix":
            listeners = await trio.open_tcp_listeners(endpoint.port, host=endpoint.host)
            endpoint = Endpoint(endpoint.scheme, host=endpoint.host, port=listeners[0].socket.getsockname()[1])
        else:
            listeners = [await open_unix_listener(endpoint.path)]
    except OSError as exc:
        raise _cannot_listen(endpoint, exc) from None
    try:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(
                    _accept_loop, listener, endpoint, serve, admission, refusals, connections, ssl_context, byte_counts
                )
            task_status.started(endpoint)
    finally:
        for listener in listeners:
            with trio.CancelScope(shield=True):
                await listener.aclose()
        if endpoint.scheme == "unix":
            with contextlib.suppress(OSError):
                os.unlink(endpoint.path)


async def _accept_loop(
    listener: trio.SocketListener,
    endpoint: Endpoint,
    serve: ServeTransport,
    admission: Admission,
    refusals: RefusalLog,
    connections: trio.Nursery,
    ssl_context: ssl.SSLContext | None,
    byte_counts: ByteCounts | None,
) -> None:
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in _OUT_OF_RESOURCES:
                raise
            refusals.refused("accept failed", f"{endpoint}: {os.strerror(exc.errno or 0)}")
            await trio.sleep(_ACCEPT_PAUSE)
            continue
        peer = _peer(stream)
        address = peer.rsplit(":", 1)[0] if endpoint.scheme != "unix" else "local"
        refusal = admission.admit(address)
        if refusal is not None:
            _refuse_now(stream, endpoint, refusal)
            await trio.aclose_forcefully(stream)
            continue
        if endpoint.scheme != "unix":
            stream.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)
            if byte_counts is not None:
                byte_counts.opened(str(endpoint), stream.socket)
        connections.start_soon(
            _connection, stream, endpoint, peer, address, serve, admission, refusals, ssl_context, byte_counts
        )


def _refuse_now(stream: trio.SocketStream, endpoint: Endpoint, refusal: Error) -> None:
    """One refusal message if the socket takes it at once (never waiting): an error
    frame, or for websocket an HTTP 503 with the same text (nothing over TLS, whose
    handshake would have to come first: the socket is just closed)."""
    if endpoint.scheme in ("tls", "wss"):
        return
    if endpoint.scheme == "ws":
        text = f"{refusal.code}: {refusal.message}\n".encode()
        data = (
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"connection: close\r\ncontent-length: " + str(len(text)).encode() + b"\r\n\r\n" + text
        )
    else:
        data = len(body := encode_message(refusal)).to_bytes(8, "little") + body
    with contextlib.suppress(OSError):
        os.write(stream.socket.fileno(), data)  # the socket is non-blocking: all, some or nothing


async def _connection(
    stream: trio.SocketStream,
    endpoint: Endpoint,
    peer: str,
    address: str,
    serve: ServeTransport,
    admission: Admission,
    refusals: RefusalLog,
    ssl_context: ssl.SSLContext | None,
    byte_counts: ByteCounts | None,
) -> None:
    description = f"{endpoint} ({peer})"
    inner: trio.abc.Stream = stream
    if ssl_context is not None:
        inner = trio.SSLStream(stream, ssl_context, server_side=True, https_compatible=endpoint.scheme == "wss")
    try:
        if endpoint.scheme not in ("ws", "wss"):
            # stream_transport: the socket's fast paths (and the hello size cap) come
            # with the transport's own class (over TLS: the plain stream transport)
            await serve(stream_transport(inner, description=description), address)
            return
        try:
            # the TLS handshake first and on its own, then the upgrade, all within the
            # handshake's time limit; an oversized frame is refused from its header (1009)
            ws = await serve_websocket_stream(inner, DEFAULT_MAX_FRAME_SIZE)
        except (HandshakeFailed, trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
            refusals.refused("websocket handshake failed", f"{description}: {type(exc).__name__}")
            return
        await serve(WebsocketTransport(ws, description=description), address)
    finally:
        admission.release(address)
        if byte_counts is not None:
            byte_counts.closing(stream.socket)
        await trio.aclose_forcefully(stream)


def _peer(stream: trio.SocketStream) -> str:
    try:
        name = stream.socket.getpeername()
    except OSError:
        return "?"
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    return str(name) or "local"


def _cannot_listen(endpoint: Endpoint, exc: OSError) -> SpearError:
    """A bind failure as one line naming the endpoint (and, for a busy port, how to
    choose another)."""
    if exc.errno == errno.EADDRINUSE:
        return SpearError(
            ErrorCode.UNAVAILABLE,
            f"cannot listen on {endpoint}: port {endpoint.port} is already in use; choose another with "
            f"`make run PORT=<port>` or SPEAR_LISTEN={endpoint.scheme}://{endpoint.host}:<port>",
        )
    return SpearError(ErrorCode.UNAVAILABLE, f"cannot listen on {endpoint}: {exc.strerror or exc}")

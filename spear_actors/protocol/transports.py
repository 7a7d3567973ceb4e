"""Byte transports under a :class:`~spear_actors.protocol.connection.Connection`.

Two kinds carry the same msgpack bodies:

* :class:`StreamTransport`: a trio byte stream (TCP, unix socket) with the
  length-prefixed framing of :mod:`.framing`;
* :class:`WebsocketTransport`: a websocket (:mod:`.wsconnection`), one binary message per body.

Also here: opening a client transport to an endpoint URL (``tcp://host:port``,
``unix:///path``, ``ws://host:port``), and serving one. The parts live in
:mod:`.transport_base` (the interface), :mod:`.streams`, :mod:`.ws_transport` and
:mod:`.endpoints` (URL parsing); every public name is re-exported here.
"""

from __future__ import annotations

import contextlib
import os
import socket as stdlib_socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from ..errors import ErrorCode, SpearError
from .dialing import dial_tcp
from .endpoints import Endpoint, _reason, parse_endpoint
from .framing import DEFAULT_MAX_FRAME_SIZE
from .streams import SocketTransport, StreamTransport, open_unix_listener, stream_transport
from .transport_base import Transport, TransportHandler, _run_handler
from .ws_transport import WebsocketTransport, _serve_websocket, open_websocket_transport

__all__ = [
    "Endpoint",
    "SocketTransport",
    "StreamTransport",
    "Transport",
    "TransportHandler",
    "WebsocketTransport",
    "open_transport",
    "open_unix_listener",
    "parse_endpoint",
    "serve_endpoint",
    "server_ssl_context",
    "stream_transport",
]


@asynccontextmanager
async def open_transport(
    url: str | Endpoint,
    *,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    connect_timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Transport]:
    """Connect to *url* and yield a transport; closes it on exit.

    ``tls://`` and ``wss://`` verify the server with *ssl_context* (default: the
    system's trusted CAs, ``ssl.create_default_context()``). A refused or unreachable
    endpoint, or a failed TLS handshake, is :class:`SpearError` UNAVAILABLE.
    """
    endpoint = url if isinstance(url, Endpoint) else parse_endpoint(url)
    if endpoint.scheme in ("tls", "wss") and ssl_context is None:
        ssl_context = ssl.create_default_context()
    if endpoint.scheme in ("ws", "wss"):
        async with open_websocket_transport(endpoint, ssl_context, max_frame_size, connect_timeout) as ws_transport:
            yield ws_transport
        return
    stream: trio.abc.Stream
    try:
        with trio.fail_after(connect_timeout):
            if endpoint.scheme in ("tcp", "tls"):
                context = ssl_context
                wrap = (
                    None
                    if context is None
                    else (lambda tcp: trio.SSLStream(tcp, context, server_hostname=endpoint.host))
                )
                stream = await dial_tcp(endpoint, wrap)
            else:
                stream = await trio.open_unix_socket(endpoint.path)
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        raise SpearError(ErrorCode.UNAVAILABLE, f"cannot connect to {endpoint}: {_reason(exc)}") from None
    transport_ = stream_transport(stream, max_frame_size=max_frame_size, description=str(endpoint))
    try:
        yield transport_
    finally:
        await transport_.aclose()


async def serve_endpoint(
    url: str | Endpoint,
    handler: TransportHandler,
    *,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[Endpoint] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on *url* and run *handler* for each accepted transport, until cancelled.

    ``tls://`` and ``wss://`` need *ssl_context*, holding the server's certificate
    and key (see :func:`server_ssl_context`); without one they are INVALID_ARGUMENT.

    ``task_status.started`` gets the bound endpoint (with the real port when the
    URL asked for port 0). A unix socket path is replaced if stale and removed on exit.
    The handler's transport is closed when the handler returns; a :class:`SpearError`
    the handler raises (e.g. :func:`accept_connection` refusing a peer) is logged and
    ends that connection only.
    """
    endpoint = url if isinstance(url, Endpoint) else parse_endpoint(url)
    secure = endpoint.scheme in ("tls", "wss")
    if secure and ssl_context is None:
        raise SpearError(
            ErrorCode.INVALID_ARGUMENT, f"{endpoint.scheme}:// listener {endpoint} needs a certificate and key"
        )
    if endpoint.scheme in ("ws", "wss"):
        await _serve_websocket(endpoint, handler, max_frame_size, ssl_context, task_status)
        return
    listeners: list[trio.SocketListener]
    if endpoint.scheme in ("tcp", "tls"):
        listeners = await trio.open_tcp_listeners(endpoint.port, host=endpoint.host)
        bound = listeners[0].socket.getsockname()
        endpoint = Endpoint(endpoint.scheme, host=endpoint.host, port=bound[1])
    else:
        listeners = [await open_unix_listener(endpoint.path)]
    is_tcp = endpoint.scheme in ("tcp", "tls")

    async def on_stream(socket_stream: trio.SocketStream) -> None:
        if is_tcp:
            socket_stream.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)
        stream: trio.abc.Stream = socket_stream
        if ssl_context is not None:
            # the TLS handshake happens on the first read, inside the protocol's own
            # handshake timeout
            stream = trio.SSLStream(socket_stream, ssl_context, server_side=True)
        transport = stream_transport(stream, max_frame_size=max_frame_size, description=str(endpoint))
        try:
            await _run_handler(handler, transport)
        finally:
            await transport.aclose()

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, on_stream, listeners)
            task_status.started(endpoint)
    finally:
        if endpoint.scheme == "unix":
            with contextlib.suppress(OSError):
                os.unlink(endpoint.path)


def server_ssl_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A TLS server context from a PEM certificate (chain) and its private key, for
    ``tls://`` and ``wss://`` listeners (TLS 1.2 at least)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context

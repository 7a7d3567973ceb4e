"""Accepting connections on one endpoint (ws://, tcp://, unix://).

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
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import trio
import trio_websocket

from ..errors import ErrorCode, SpearError
from ..protocol.framing import DEFAULT_MAX_FRAME_SIZE
from ..protocol.messages import Error, encode_message
from ..protocol.transports import Endpoint, Transport, WebsocketTransport, parse_endpoint, stream_transport
from ..protocol.wsguard import FrameGuard
from .refusals import RefusalLog

__all__ = ["Admission", "listen"]

_WS_QUEUE: Final = 64
_WS_HANDSHAKE_TIMEOUT: Final = 10.0
"""How long a websocket client has to send its HTTP upgrade request."""
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
    task_status: trio.TaskStatus[Endpoint] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept on *url* until cancelled; each admitted connection is served by *serve*
    in the *connections* nursery (which outlives this listener: cancelling the
    listener stops accepting and nothing else)."""
    endpoint = parse_endpoint(url)
    try:
        if endpoint.scheme in ("tcp", "ws"):
            listeners = await trio.open_tcp_listeners(endpoint.port, host=endpoint.host)
            endpoint = Endpoint(endpoint.scheme, host=endpoint.host, port=listeners[0].socket.getsockname()[1])
        else:
            listeners = [await _unix_listener(endpoint.path)]
    except OSError as exc:
        raise _cannot_listen(endpoint, exc) from None
    try:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(_accept_loop, listener, endpoint, serve, admission, refusals, connections)
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
        connections.start_soon(_connection, stream, endpoint, peer, address, serve, admission, refusals)


def _refuse_now(stream: trio.SocketStream, endpoint: Endpoint, refusal: Error) -> None:
    """One refusal message if the socket takes it at once (never waiting): an error
    frame, or for websocket an HTTP 503 with the same text."""
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
) -> None:
    description = f"{endpoint} ({peer})"
    try:
        if endpoint.scheme != "ws":
            # stream_transport: the socket's fast paths (and the hello size cap) come
            # with the transport's own class
            await serve(stream_transport(stream, description=description), address)
            return
        async with trio.open_nursery() as nursery:  # the websocket's reader task
            try:
                with trio.fail_after(_WS_HANDSHAKE_TIMEOUT):
                    # FrameGuard: an oversized frame is refused from its header (1009)
                    request = await trio_websocket.wrap_server_stream(
                        nursery,
                        FrameGuard(stream, DEFAULT_MAX_FRAME_SIZE),
                        message_queue_size=_WS_QUEUE,
                        max_message_size=DEFAULT_MAX_FRAME_SIZE,
                    )
                    ws = await request.accept()
            except (trio.TooSlowError, trio_websocket.ConnectionClosed, trio.BrokenResourceError, OSError) as exc:
                refusals.refused("websocket handshake failed", f"{description}: {type(exc).__name__}")
                nursery.cancel_scope.cancel()
                return
            try:
                await serve(WebsocketTransport(ws, description=description), address)
            finally:
                nursery.cancel_scope.cancel()
    finally:
        admission.release(address)
        await trio.aclose_forcefully(stream)


def _peer(stream: trio.SocketStream) -> str:
    try:
        name = stream.socket.getpeername()
    except OSError:
        return "?"
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    return str(name) or "local"


async def _unix_listener(path: str) -> trio.SocketListener:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a stale socket from a previous run
    sock = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


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

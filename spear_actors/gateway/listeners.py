"""Accepting connections on one endpoint (ws://, tcp://, unix://).

The gateway owns its accept loops (rather than one ``serve_endpoint`` call per URL)
so that a drain can stop accepting while the connections already open carry on, and
so that a connection over the limit is refused before any protocol work.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import socket as stdlib_socket
from collections.abc import Awaitable, Callable
from typing import Final

import trio
import trio_websocket

from ..errors import ErrorCode, SpearError
from ..protocol.framing import DEFAULT_MAX_FRAME_SIZE
from ..protocol.messages import Error, encode_message
from ..protocol.transports import Endpoint, StreamTransport, Transport, WebsocketTransport, parse_endpoint
from .refusals import RefusalLog

__all__ = ["Admission", "listen"]

_WS_QUEUE: Final = 64
_ACCEPT_PAUSE: Final = 0.1
"""After accept fails for lack of descriptors or memory: wait this long, then retry."""
_OUT_OF_RESOURCES: Final = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

Admission = Callable[[], Error | None]
"""Asked for each accepted connection: None to serve it, else the error to refuse it with."""
ServeTransport = Callable[[Transport, str], Awaitable[None]]
"""Serves one admitted connection: its transport and the peer's address."""


async def listen(
    url: str,
    *,
    serve: ServeTransport,
    admit: Admission,
    refusals: RefusalLog,
    connections: trio.Nursery,
    task_status: trio.TaskStatus[Endpoint] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept on *url* until cancelled; each admitted connection is served by *serve*
    in the *connections* nursery (which outlives this listener: cancelling the
    listener stops accepting and nothing else)."""
    endpoint = parse_endpoint(url)
    try:
        if endpoint.scheme == "ws":
            await _listen_websocket(endpoint, serve, admit, refusals, connections, task_status)
            return
        if endpoint.scheme == "tcp":
            listeners = await trio.open_tcp_listeners(endpoint.port, host=endpoint.host)
            endpoint = Endpoint("tcp", host=endpoint.host, port=listeners[0].socket.getsockname()[1])
        else:
            listeners = [await _unix_listener(endpoint.path)]
    except OSError as exc:
        raise _cannot_listen(endpoint, exc) from None
    except BaseExceptionGroup as group:  # trio-websocket binds inside a nursery
        matched, _ = group.split(OSError)
        if matched is None:
            raise
        raise _cannot_listen(endpoint, _first(matched)) from None
    try:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(_accept_loop, listener, endpoint, serve, admit, refusals, connections)
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
    admit: Admission,
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
        if endpoint.scheme == "tcp":
            stream.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)
        peer = _peer(stream)
        transport = StreamTransport(stream, description=f"{endpoint} ({peer})")
        refusal = admit()
        if refusal is not None:
            # before any protocol work: one error frame if the socket takes it, then close
            transport.send_nowait([encode_message(refusal)])
            await trio.aclose_forcefully(stream)
            continue
        connections.start_soon(serve, transport, peer.rsplit(":", 1)[0] if endpoint.scheme == "tcp" else "local")


async def _listen_websocket(
    endpoint: Endpoint,
    serve: ServeTransport,
    admit: Admission,
    refusals: RefusalLog,
    connections: trio.Nursery,
    task_status: trio.TaskStatus[Endpoint],
) -> None:
    bound = endpoint  # the real port once listening (port 0 in the URL picks one)

    async def on_request(request: trio_websocket.WebSocketRequest) -> None:
        refusal = admit()
        if refusal is not None:
            with trio.move_on_after(1.0), contextlib.suppress(trio_websocket.ConnectionClosed, OSError):
                await request.reject(503, body=f"{refusal.code}: {refusal.message}".encode())
            return
        try:
            ws = await request.accept()
        except trio_websocket.ConnectionClosed:
            return
        remote = request.remote
        address = str(remote.address) if isinstance(remote, trio_websocket.Endpoint) else str(remote)
        port = f":{remote.port}" if isinstance(remote, trio_websocket.Endpoint) else ""
        await serve(WebsocketTransport(ws, description=f"{bound} ({address}{port})"), address)

    async with trio.open_nursery() as nursery:
        # handlers run in *connections*; this nursery holds only the accept loops, so
        # cancelling the listener closes the listening sockets and nothing else
        server = await nursery.start(
            functools.partial(
                trio_websocket.serve_websocket,
                on_request,
                endpoint.host,
                endpoint.port,
                None,
                handler_nursery=connections,
                message_queue_size=_WS_QUEUE,
                max_message_size=DEFAULT_MAX_FRAME_SIZE,
                connect_timeout=10.0,
                disconnect_timeout=1.0,
            )
        )
        bound = Endpoint("ws", host=endpoint.host, port=server.port)
        task_status.started(bound)


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


def _first(group: BaseException) -> OSError:
    while isinstance(group, BaseExceptionGroup):
        group = group.exceptions[0]
    assert isinstance(group, OSError)
    return group


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

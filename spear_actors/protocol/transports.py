"""Byte transports under a :class:`~spear_actors.protocol.connection.Connection`.

Two kinds carry the same msgpack bodies:

* :class:`StreamTransport`: a trio byte stream (TCP, unix socket) with the
  length-prefixed framing of :mod:`.framing`;
* :class:`WebsocketTransport`: a trio-websocket connection, one binary message per body.

Also here: parsing of endpoint URLs (``tcp://host:port``, ``unix:///path``,
``ws://host:port``), opening a client transport to one, and serving one.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import logging
import os
import socket as stdlib_socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Final
from urllib.parse import urlsplit

import trio
import trio_websocket
from wsproto.events import BytesMessage
from wsproto.utilities import LocalProtocolError

from ..errors import ErrorCode, SpearError
from .framing import CLOSE_FRAME, DEFAULT_MAX_FRAME_SIZE, FrameDecoder, ProtocolError
from .wsguard import GuardedListener, NowaitWriter

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

log = logging.getLogger(__name__)

# 64 KiB, not more: a read buffer of 128 KiB or more is above glibc's mmap threshold,
# and each read then maps and unmaps it (measured here: ~10 µs per read, against ~1).
_RECEIVE_SIZE: Final = 64 * 1024
_WS_QUEUE: Final = 64


class Transport(abc.ABC):
    """Moves whole message bodies; knows nothing of what they mean."""

    description: str = "transport"

    @abc.abstractmethod
    async def send_bodies(self, bodies: list[bytes]) -> None:
        """Send *bodies* in order; raises :class:`SpearError` UNAVAILABLE if the link is gone.

        Cancelling it part way may leave a body half sent: the link is then unusable.
        """

    @abc.abstractmethod
    async def receive_body(self) -> bytes | None:
        """Return the next body, or None once the peer has closed (orderly or EOF).

        Raises :class:`ProtocolError` for a malformed or oversized frame and
        :class:`SpearError` UNAVAILABLE when the link breaks.
        """

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the link (best effort, orderly where the transport has a close)."""

    def closing_because(self, error: SpearError) -> None:  # noqa: B027 (optional hook)
        """Say why the link is about to close, for a transport whose close carries a
        reason (websocket close codes); others ignore it."""


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


def _lost(what: str, exc: BaseException) -> SpearError:
    return SpearError(ErrorCode.UNAVAILABLE, f"connection lost while {what}: {type(exc).__name__}")


class StreamTransport(Transport):
    """Length-prefixed frames over any trio byte stream (a socket, a TLS stream, ...)."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        description: str = "stream",
    ) -> None:
        self.stream = stream
        self.description = description
        self.decoder = FrameDecoder(max_frame_size)
        """Cuts the received bytes into bodies (its ``max_frame_size`` is the limit)."""
        self._sent_close = False
        self._unsent = b""

    @staticmethod
    def _frames(bodies: list[bytes]) -> bytearray:
        out = bytearray()
        for body in bodies:
            out += len(body).to_bytes(8, "little")
            out += body
        return out

    async def send_bodies(self, bodies: list[bytes]) -> None:
        out = self._unsent + self._frames(bodies)
        self._unsent = b""
        try:
            await self.stream.send_all(out)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise _lost("sending", exc) from None

    async def receive_body(self) -> bytes | None:
        decoder = self.decoder
        while True:
            body = decoder.next_body()
            if body is not None:
                return body
            if decoder.closed:
                return None
            try:
                data = await self._receive_some()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise _lost("receiving", exc) from None
            if not data:
                return None
            decoder.feed(data)

    async def _receive_some(self) -> bytes:
        return bytes(await self.stream.receive_some(_RECEIVE_SIZE))

    def receive_buffered(self) -> bytes | None:
        """A body that has already arrived, without waiting; None if there is none
        (lets a reader take everything one read brought in before it hands over)."""
        return self.decoder.next_body()

    async def aclose(self) -> None:
        if not self._sent_close:
            self._sent_close = True
            with trio.move_on_after(0.5) as scope:
                scope.shield = True
                try:
                    await self.stream.send_all(self._unsent + CLOSE_FRAME)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, trio.BusyResourceError):
                    pass
        await trio.aclose_forcefully(self.stream)


class SocketTransport(StreamTransport):
    """:class:`StreamTransport` over a plain socket, with the fast paths only a socket
    allows: writing without waiting, and waiting for data without taking it."""

    def __init__(
        self,
        stream: trio.SocketStream,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        description: str = "stream",
    ) -> None:
        super().__init__(stream, max_frame_size=max_frame_size, description=description)
        self._socket = stream.socket

    def send_nowait(self, bodies: list[bytes]) -> bool:
        """Write *bodies* now if the socket takes them without waiting.

        True when all of them went; False when the socket took only part: the rest is
        kept and the next :meth:`send_bodies` call sends it first. Raises
        :class:`SpearError` UNAVAILABLE if the link is gone.
        """
        if len(bodies) == 1 and not self._unsent:  # the common case, without copies
            out: bytes | bytearray = len(bodies[0]).to_bytes(8, "little") + bodies[0]
        else:
            out = self._unsent + self._frames(bodies)
        sent = 0
        fd = self._socket.fileno()
        if fd != -1:  # -1: closed (send_bodies then says so)
            try:
                sent = os.write(fd, out)  # the socket is non-blocking (trio's)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise _lost("sending", exc) from None
        if sent == len(out):
            self._unsent = b""
            return True
        self._unsent = bytes(out[sent:])
        return False

    async def _receive_some(self) -> bytes:
        # Wait first, then read: a reader almost always comes before its data, and
        # trying to read first costs a refused read and its exception every time.
        fd = self._socket.fileno()
        if fd == -1:
            raise trio.ClosedResourceError("the socket is closed")
        while True:
            await trio.lowlevel.wait_readable(self._socket)
            try:
                return os.read(fd, _RECEIVE_SIZE)
            except BlockingIOError:
                continue

    def interrupt_receive(self) -> None:
        """Make a wait for data in :meth:`receive_body` fail at once (the link is being
        abandoned; close it next)."""
        if self._socket.fileno() != -1:
            trio.lowlevel.notify_closing(self._socket)

    async def wait_readable(self) -> None:
        """Wait until data has arrived, without taking it. Cancelling this wait frees
        the link for another task's read at once."""
        try:
            await trio.lowlevel.wait_readable(self._socket)
        except (trio.ClosedResourceError, OSError, ValueError):
            pass  # the read that follows reports the lost link


def stream_transport(
    stream: trio.abc.Stream, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, description: str = "stream"
) -> StreamTransport:
    """The framed transport for *stream*: a :class:`SocketTransport` over a plain
    socket, a :class:`StreamTransport` over anything else (e.g. ``trio.SSLStream``)."""
    if isinstance(stream, trio.SocketStream):
        return SocketTransport(stream, max_frame_size=max_frame_size, description=description)
    return StreamTransport(stream, max_frame_size=max_frame_size, description=description)


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


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """A parsed endpoint URL: ``scheme`` is tcp, tls, unix, ws or wss; ``path`` is for unix only."""

    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_endpoint(url: str) -> Endpoint:
    """Parse ``tcp://host:port``, ``tls://host:port``, ``ws://host:port[/path]``,
    ``wss://host:port[/path]`` or ``unix:///abs/path``.

    Raises :class:`SpearError` INVALID_ARGUMENT naming what is wrong.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "unix":
        path = (parts.netloc + parts.path) if parts.netloc else parts.path
        if not path:
            raise SpearError(ErrorCode.INVALID_ARGUMENT, f"unix endpoint {url!r} has no path")
        return Endpoint("unix", path=path)
    if scheme not in ("tcp", "tls", "ws", "wss"):
        raise SpearError(
            ErrorCode.INVALID_ARGUMENT,
            f"endpoint {url!r}: scheme must be ws, wss, tcp, tls or unix",
        )
    try:
        port = parts.port
    except ValueError:
        raise SpearError(ErrorCode.INVALID_ARGUMENT, f"endpoint {url!r} has an invalid port") from None
    if port is None or not parts.hostname:
        raise SpearError(ErrorCode.INVALID_ARGUMENT, f"endpoint {url!r} needs host:port")
    return Endpoint(scheme, host=parts.hostname, port=port)


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
    if endpoint.scheme == "wss":
        assert ssl_context is not None
        async with _open_wss_transport(endpoint, ssl_context, max_frame_size, connect_timeout) as wss_transport:
            yield wss_transport
        return
    if endpoint.scheme == "ws":
        # connect_timeout bounds the connect and handshake only (trio-websocket applies
        # it); errors raised by the caller's block pass through unchanged.
        connected = False
        try:
            async with trio_websocket.open_websocket_url(
                f"{endpoint.scheme}://{_host(endpoint.host)}:{endpoint.port}/",
                ssl_context=ssl_context,
                message_queue_size=_WS_QUEUE,
                max_message_size=max_frame_size,
                connect_timeout=connect_timeout,
                disconnect_timeout=1.0,
            ) as ws:
                connected = True
                if isinstance(ws._stream, trio.SocketStream):
                    # writes without waiting (WebsocketTransport.send_nowait): the
                    # reader task and trio-websocket's own sends see the same stream
                    ws._stream = NowaitWriter(ws._stream)
                transport = WebsocketTransport(ws, description=str(endpoint))
                try:
                    yield transport
                finally:
                    await transport.aclose()
        except (OSError, trio_websocket.HandshakeError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            if connected:
                raise
            raise SpearError(ErrorCode.UNAVAILABLE, f"cannot connect to {endpoint}: {exc!r}") from None
        return
    stream: trio.abc.Stream
    try:
        with trio.fail_after(connect_timeout):
            if endpoint.scheme in ("tcp", "tls"):
                tcp = await trio.open_tcp_stream(endpoint.host, endpoint.port)
                tcp.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)
                stream = tcp
                if ssl_context is not None:
                    tls = trio.SSLStream(tcp, ssl_context, server_hostname=endpoint.host)
                    try:
                        await tls.do_handshake()
                    except BaseException:
                        await trio.aclose_forcefully(tcp)
                        raise
                    stream = tls
            else:
                stream = await trio.open_unix_socket(endpoint.path)
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        raise SpearError(ErrorCode.UNAVAILABLE, f"cannot connect to {endpoint}: {_reason(exc)}") from None
    transport_ = stream_transport(stream, max_frame_size=max_frame_size, description=str(endpoint))
    try:
        yield transport_
    finally:
        await transport_.aclose()


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


def _reason(exc: BaseException) -> str:
    """*exc* in words; a failed TLS handshake names its cause (e.g. certificate
    verify failed), which trio keeps as the BrokenResourceError's cause."""
    cause = exc.__cause__
    if isinstance(exc, trio.BrokenResourceError) and isinstance(cause, ssl.SSLError):
        return f"TLS handshake failed: {getattr(cause, 'verify_message', None) or cause.reason or cause}"
    return str(exc) or repr(exc)


TransportHandler = Callable[[Transport], Awaitable[None]]


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


async def _run_handler(handler: TransportHandler, transport: Transport) -> None:
    """Run *handler*; a :class:`SpearError` from it (a refused hello, a protocol error,
    a lost link) ends this one connection, never the listener and its other peers."""
    try:
        await handler(transport)
    except SpearError as exc:
        log.info("%s: connection ended: %s", transport.description, exc)


async def open_unix_listener(path: str) -> trio.SocketListener:
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


def server_ssl_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A TLS server context from a PEM certificate (chain) and its private key, for
    ``tls://`` and ``wss://`` listeners (TLS 1.2 at least)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host

"""Measured alternative (b) of benchmarks/ws_impls.py, not used by spear_actors: a
websocket connection that drives :mod:`wsproto` from the task that reads (no reader
task, no channel hand-off), as the project had it before it chose the sans-IO core
of ``websockets`` (docs/performance.md, "The websocket path"). Same interface as
:mod:`spear_actors.protocol.wsconnection`.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Final

import trio
from wsproto import ConnectionType
from wsproto.connection import Connection as WsprotoConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.handshake import H11Handshake
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from spear_actors.protocol.wsguard import NowaitWriter

__all__ = [
    "CloseReason",
    "HandshakeFailed",
    "WebsocketConnection",
    "accept_websocket",
    "connect_websocket",
]

# RFC 6455 §7.4.1
_NORMAL: Final = 1000
_PROTOCOL_ERROR: Final = 1002
_ABNORMAL: Final = 1006  # never sent: no close frame was received
_TOO_BIG: Final = 1009

_RECEIVE_SIZE: Final = 64 * 1024  # see streams.py: above this, glibc maps each buffer
_MAX_UPGRADE: Final = 64 * 1024
"""The most bytes of HTTP an upgrade request or response may take."""
_CLOSE_GRACE: Final = 0.5
"""How long :meth:`WebsocketConnection.aclose` waits for the peer's close frame."""


@dataclasses.dataclass(frozen=True, slots=True)
class CloseReason:
    """Why a websocket closed: the close code (RFC 6455 §7.4.1; 1006 when the link
    ended without a close frame) and its reason text."""

    code: int
    reason: str = ""


class HandshakeFailed(Exception):
    """The HTTP upgrade did not succeed (refused, malformed, or the link ended)."""


class WebsocketConnection:
    """One open websocket over *stream*, with no task of its own.

    One task at a time may call :meth:`receive_message`; any task may send. Bytes
    leave whole frames in the order their writes began (the stream's lock), so
    concurrent senders never interleave inside a frame.
    """

    def __init__(self, stream: NowaitWriter, connection: WsprotoConnection, *, max_message_size: int) -> None:
        self.stream = stream
        """The stream under the websocket (tests and the transport close it)."""
        self.max_message_size = max_message_size
        """Incoming messages over this many bytes close the websocket with 1009."""
        self.closed: CloseReason | None = None
        """Set once the websocket is closed (or closing): the peer's close code if
        it sent one, else ours, 1006 if the link just ended."""
        self._ws = connection
        self._messages: collections.deque[bytes | str] = collections.deque()
        self._parts: list[bytes | str] = []  # a message arriving in several events
        self._size = 0  # its bytes so far
        self._receiving = False
        self._peer_closed = trio.Event()  # the peer's close frame (or the link's end) seen

    # -- receiving -----------------------------------------------------------------
    async def receive_message(self) -> bytes | str | None:
        """The next whole message (bytes, or str for a text message); None once the
        websocket is closed (see :attr:`closed`). Raises :class:`trio.BusyResourceError`
        if another task is receiving, and the stream's errors when the link breaks
        (after marking the connection closed with 1006)."""
        messages = self._messages
        if messages:
            return messages.popleft()
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving from this websocket")
        self._receiving = True
        try:
            while not messages:
                if self._peer_closed.is_set():
                    return None
                try:
                    data = await self.stream.receive_some(_RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    self._ended()
                    raise
                if not data:
                    self._ended()
                    return None
                reply = self._received(data)
                if reply:
                    await self._send_control(reply)
            return messages.popleft()
        finally:
            self._receiving = False

    def receive_buffered(self) -> bytes | str | None:
        """A message that has already arrived, without waiting; None if there is none."""
        return self._messages.popleft() if self._messages else None

    def _ended(self) -> None:
        if self.closed is None:
            self.closed = CloseReason(_ABNORMAL, "the link ended without a close frame")
        self._peer_closed.set()

    def _received(self, data: bytes | bytearray) -> bytes:
        """Feed *data* to wsproto and act on its events; returns the control frames
        to send in answer (pongs, the close reply)."""
        ws = self._ws
        reply = b""
        try:
            ws.receive_data(data if type(data) is bytes else bytes(data))
        except LocalProtocolError:  # closed already: nothing more is read
            self._ended()
            return reply
        for event in ws.events():
            kind = type(event)
            if kind is BytesMessage or kind is TextMessage:
                assert isinstance(event, Message)
                if self._peer_closed.is_set():
                    continue  # what follows a refused message is not read
                payload: bytes | str = event.data
                if event.message_finished and not self._parts:
                    size = len(payload)
                    if size > self.max_message_size:
                        reply += self._fail(_TOO_BIG, f"message of {size} bytes over {self.max_message_size}")
                        continue
                    self._messages.append(payload)
                    continue
                self._size += len(payload)
                if self._size > self.max_message_size:
                    self._parts = []
                    reply += self._fail(_TOO_BIG, f"message over {self.max_message_size} bytes")
                    continue
                self._parts.append(payload)
                if event.message_finished:
                    parts, self._parts, self._size = self._parts, [], 0
                    self._messages.append(b"".join(parts) if kind is BytesMessage else "".join(parts))  # type: ignore[arg-type]
            elif kind is Ping:
                assert isinstance(event, Ping)
                if ws.state is ConnectionState.OPEN:
                    reply += ws.send(event.response())
            elif kind is CloseConnection:
                assert isinstance(event, CloseConnection)
                reply += self._on_close(event)
        return reply

    def _on_close(self, event: CloseConnection) -> bytes:
        ws = self._ws
        if ws.state is ConnectionState.OPEN:
            # wsproto reports a frame it cannot parse as a close while still open:
            # fail the connection with that code (1002, 1007 for bad UTF-8, ...)
            return self._fail(event.code, event.reason or "")
        if self.closed is None or self.closed.code == _ABNORMAL:
            self.closed = CloseReason(event.code, event.reason or "")
        self._peer_closed.set()
        if ws.state is ConnectionState.REMOTE_CLOSING:
            return ws.send(event.response())
        return b""

    def _fail(self, code: int, reason: str) -> bytes:
        """Close with *code* now, reading nothing more; the close frame to send."""
        if self.closed is None:
            self.closed = CloseReason(code, reason)
        self._peer_closed.set()
        self._parts, self._size = [], 0
        if self._ws.state is ConnectionState.OPEN:
            return self._ws.send(CloseConnection(code=code, reason=reason[:120]))
        return b""

    async def _send_control(self, data: bytes) -> None:
        try:
            if self.stream.write_nowait(data) is None:
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self._ended()

    # -- sending -------------------------------------------------------------------
    def encode(self, data: bytes) -> bytes:
        """The frame of one binary message carrying *data*. Raises
        :class:`LocalProtocolError` once the websocket is closing."""
        if self._ws.state is not ConnectionState.OPEN or self._peer_closed.is_set():
            raise LocalProtocolError("the websocket is closing")
        return self._ws.send(BytesMessage(data=data))

    async def send_message(self, data: bytes) -> None:
        """Send *data* as one binary message. Raises :class:`LocalProtocolError` once
        the websocket is closing, and the stream's errors when the link breaks."""
        frame = self.encode(data)
        await self.stream.send_all(frame)

    # -- closing -------------------------------------------------------------------
    async def aclose(self, code: int = _NORMAL, reason: str = "") -> None:
        """Send a close frame with *code* (if none was sent), wait a little for the
        peer's (when no other task is receiving), and close the stream."""
        try:
            with trio.move_on_after(_CLOSE_GRACE) as scope:
                scope.shield = True
                if self._peer_closed.is_set():
                    return  # closed from the other side, failed, or the link ended
                if self._ws.state is ConnectionState.OPEN:
                    if self.closed is None:
                        self.closed = CloseReason(code, reason)
                    await self.stream.send_all(self._ws.send(CloseConnection(code=code, reason=reason[:120])))
                if self._receiving:
                    await self._peer_closed.wait()
                else:
                    while not self._peer_closed.is_set():
                        await self.receive_message()  # messages after our close are dropped
                        self._messages.clear()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(self.stream)


async def accept_websocket(stream: NowaitWriter, *, max_message_size: int) -> WebsocketConnection:
    """Read the HTTP upgrade request from *stream* and accept it (any path, no
    subprotocol, no extension). A request that is not a websocket upgrade is answered
    with an HTTP error status (426 Upgrade Required without the upgrade headers, 400
    for a malformed one) and :class:`HandshakeFailed` raised; the caller closes the
    stream and bounds the time."""
    handshake = H11Handshake(ConnectionType.SERVER)
    seen = 0
    while True:
        data = await stream.receive_some(_RECEIVE_SIZE)
        if not data:
            raise HandshakeFailed("the peer closed before its upgrade request")
        seen += len(data)
        try:
            handshake.receive_data(bytes(data))
            request = next((e for e in handshake.events() if isinstance(e, Request)), None)
        except RemoteProtocolError as exc:
            await _refuse(stream, exc)
            raise HandshakeFailed(f"not a websocket upgrade: {exc}") from None
        if request is not None:
            break
        if seen > _MAX_UPGRADE:
            await _send_status(stream, 431, "Request Header Fields Too Large", "upgrade request too large")
            raise HandshakeFailed("upgrade request too large")
    await stream.send_all(handshake.send(AcceptConnection()))
    connection = handshake.connection
    assert connection is not None
    return WebsocketConnection(stream, connection, max_message_size=max_message_size)


async def _refuse(stream: NowaitWriter, exc: RemoteProtocolError) -> None:
    hint = exc.event_hint
    status = hint.status_code if isinstance(hint, RejectConnection) else 400
    if "upgrade" in str(exc).lower():
        await _send_status(stream, 426, "Upgrade Required", f"this endpoint speaks websocket only: {exc}")
    elif status == 426:
        await _send_status(stream, 426, "Upgrade Required", str(exc))
    else:
        await _send_status(stream, 400, "Bad Request", str(exc))


async def _send_status(stream: NowaitWriter, status: int, phrase: str, text: str) -> None:
    body = (text + "\n").encode()
    upgrade = b"upgrade: websocket\r\nsec-websocket-version: 13\r\n" if status == 426 else b""
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
        f"content-length: {len(body)}\r\n"
    ).encode()
    try:
        await stream.send_all(head + upgrade + b"\r\n" + body)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


async def connect_websocket(
    stream: NowaitWriter, host: str, path: str = "/", *, max_message_size: int
) -> WebsocketConnection:
    """Send the HTTP upgrade request for *path* on *host* over *stream* and wait
    for the 101; :class:`HandshakeFailed` if the server refuses (naming its status)."""
    handshake = H11Handshake(ConnectionType.CLIENT)
    await stream.send_all(handshake.send(Request(host=host, target=path)))
    seen = 0
    while True:
        data = await stream.receive_some(_RECEIVE_SIZE)
        if not data:
            raise HandshakeFailed("the server closed during the websocket handshake")
        seen += len(data)
        try:
            handshake.receive_data(bytes(data))
            for event in handshake.events():
                if isinstance(event, AcceptConnection):
                    connection = handshake.connection
                    assert connection is not None
                    return WebsocketConnection(stream, connection, max_message_size=max_message_size)
                if isinstance(event, RejectConnection):
                    raise HandshakeFailed(f"websocket upgrade refused: HTTP {event.status_code}")
                if isinstance(event, RejectData):  # pragma: no cover (after RejectConnection)
                    continue
        except RemoteProtocolError as exc:
            raise HandshakeFailed(f"bad websocket handshake answer: {exc}") from None
        if seen > _MAX_UPGRADE:
            raise HandshakeFailed("websocket handshake answer too large")

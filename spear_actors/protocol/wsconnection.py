"""A websocket connection that drives the sans-IO core of ``websockets`` from the
task that reads.

trio-websocket runs a reader task per connection that feeds wsproto and hands each
message to ``get_message`` over a memory channel: two task steps per message, and a
lock and a stream write per send. :class:`WebsocketConnection` has no task of its
own: :meth:`~WebsocketConnection.receive_message` reads from the stream and feeds
``websockets``' protocol object (``ServerProtocol`` / ``ClientProtocol``: frame
parsing with its C speedups, the message size limit checked from each frame's
header, pongs and the close handshake); sends serialize with the same object and
write through a :class:`~.wsguard.NowaitWriter` (at once when the socket takes the
bytes). Why this and not wsproto driven the same way: docs/performance.md, "The
websocket path".

The opening handshakes are here too: :func:`accept_websocket` (server: reads the
HTTP upgrade request, answers 101, or an HTTP error status for anything that is not
a websocket upgrade: 426 without the upgrade headers, 400 when malformed) and
:func:`connect_websocket` (client).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Final

import trio
from websockets.client import ClientProtocol
from websockets.exceptions import WebSocketException
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from .wsguard import NowaitWriter

__all__ = [
    "CloseReason",
    "HandshakeFailed",
    "WebsocketClosing",
    "WebsocketConnection",
    "accept_websocket",
    "connect_websocket",
]

_NORMAL: Final = 1000
_ABNORMAL: Final = 1006  # never sent: no close frame was received
_INVALID_DATA: Final = 1007
_RECEIVE_SIZE: Final = 64 * 1024  # see streams.py: above this, glibc maps each buffer
_MAX_UPGRADE: Final = 64 * 1024
"""The most bytes of HTTP an upgrade request or response may take."""
_CLOSE_GRACE: Final = 0.5
"""How long :meth:`WebsocketConnection.aclose` waits for the peer's close frame."""
_BINARY: Final = Opcode.BINARY
_TEXT: Final = Opcode.TEXT
_CONT: Final = Opcode.CONT
_OPEN: Final = State.OPEN
_CLOSED: Final = State.CLOSED


_LOG: Final = logging.getLogger("spear_actors.protocol.websocket")
# Never DEBUG, whatever the root logger's level: at DEBUG the websockets library
# logs every frame's bytes (tokens, call arguments) and the upgrade's headers.
_LOG.setLevel(logging.INFO)


@dataclasses.dataclass(frozen=True, slots=True)
class CloseReason:
    """Why a websocket closed: the close code (RFC 6455 §7.4.1; 1006 when the link
    ended without a close frame) and its reason text."""

    code: int
    reason: str = ""


class HandshakeFailed(Exception):
    """The HTTP upgrade did not succeed (refused, malformed, or the link ended)."""


class WebsocketClosing(Exception):
    """A message was sent on a websocket that is closing or closed."""


class WebsocketConnection:
    """One open websocket over *stream*, with no task of its own.

    One task at a time may call :meth:`receive_message`; any task may send. Each
    send writes whole frames under the stream's lock, so concurrent senders never
    interleave inside a frame.
    """

    def __init__(self, stream: NowaitWriter, protocol: Protocol) -> None:
        self.stream = stream
        """The stream under the websocket (tests and the transport close it)."""
        self.closed: CloseReason | None = None
        """Set once the websocket has closed or is closing: the peer's close code if
        it sent one, else ours, 1006 if the link just ended."""
        self._protocol = protocol
        self._messages: collections.deque[bytes | str] = collections.deque()
        self._parts: list[bytes] = []  # a fragmented message so far
        self._text = False  # ... and whether it is text
        self._receiving = False
        self._failed = False  # we failed the connection ourselves (1007)
        self._ended = trio.Event()  # nothing more will be read

    # -- receiving -----------------------------------------------------------------
    async def receive_message(self) -> bytes | str | None:
        """The next whole message (bytes, or str for a text message); None once the
        websocket has closed (see :attr:`closed`). Raises :class:`trio.BusyResourceError`
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
                if self._ended.is_set():
                    return None
                try:
                    data = await self.stream.receive_some(_RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    self._end(CloseReason(_ABNORMAL, "the link broke"))
                    raise
                if not data:
                    self._protocol.receive_eof()
                    self._end(self._close_reason())
                    return None
                await self._received(data)
            return messages.popleft()
        finally:
            self._receiving = False

    def receive_buffered(self) -> bytes | str | None:
        """A message that has already arrived, without waiting; None if there is none."""
        return self._messages.popleft() if self._messages else None

    async def _received(self, data: bytes | bytearray) -> None:
        """Feed *data* to the protocol and act on what came of it."""
        self._protocol.receive_data(data)
        await self._handle(self._protocol.events_received())

    async def _handle(self, events: list[Frame | Request | Response]) -> None:
        """Queue whole messages, send what the protocol answers (pongs, close
        frames), and see whether the websocket has closed."""
        protocol = self._protocol
        for frame in events:
            opcode = frame.opcode  # type: ignore[union-attr]  # after the handshake, only frames
            if opcode is _BINARY or opcode is _TEXT:
                assert isinstance(frame, Frame)
                if frame.fin:
                    payload = bytes(frame.data)
                    if opcode is _BINARY:
                        self._messages.append(payload)
                    elif not self._append_text(payload):
                        break
                else:
                    self._parts = [bytes(frame.data)]
                    self._text = opcode is _TEXT
            elif opcode is _CONT:
                assert isinstance(frame, Frame)
                self._parts.append(bytes(frame.data))
                if frame.fin:
                    whole = b"".join(self._parts)
                    self._parts = []
                    if not self._text:
                        self._messages.append(whole)
                    elif not self._append_text(whole):
                        break
        writes = protocol.data_to_send()
        if (
            protocol.close_rcvd is not None
            or protocol.parser_exc is not None
            or protocol.state is _CLOSED
            or self._failed
        ):
            # the peer's close (answered), or a frame the protocol refused: 1002,
            # 1007 bad UTF-8, 1009 over the size limit (its close frame is in writes)
            self._end(self._close_reason())
        if writes:
            await self._write(writes)

    def _append_text(self, payload: bytes) -> bool:
        """Queue a text message; False (and the websocket failed with 1007) if it is
        not UTF-8 (the protocol core leaves that check to its caller)."""
        try:
            self._messages.append(payload.decode())
        except UnicodeDecodeError:
            self._protocol.fail(_INVALID_DATA, "invalid UTF-8 in a text message")
            self._failed = True
            return False
        return True

    def _close_reason(self) -> CloseReason:
        protocol = self._protocol
        close = protocol.close_rcvd
        if protocol.parser_exc is not None and protocol.close_sent is not None:
            close = protocol.close_sent  # we failed the connection (1002, 1007, 1009)
            return CloseReason(int(close.code), close.reason)
        if close is not None and protocol.close_rcvd_then_sent is not False:
            return CloseReason(int(close.code), close.reason)  # the peer closed first
        sent = protocol.close_sent
        if sent is not None:
            return CloseReason(int(sent.code), sent.reason)
        return CloseReason(_ABNORMAL, "the link ended without a close frame")

    def _end(self, reason: CloseReason) -> None:
        if self.closed is None or self.closed.code == _ABNORMAL:
            self.closed = reason
        self._ended.set()

    async def _write(self, writes: list[bytes]) -> None:
        """Send control frames (an empty write, end of stream, is left to aclose)."""
        data = b"".join(writes)
        if not data:
            return
        try:
            if self.stream.write_nowait(data) is None:
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self._end(CloseReason(_ABNORMAL, "the link broke"))

    # -- sending -------------------------------------------------------------------
    def encode(self, data: bytes) -> bytes:
        """The frame of one binary message carrying *data*. Raises
        :class:`WebsocketClosing` once the websocket is closing."""
        protocol = self._protocol
        if protocol.state is not _OPEN or self._ended.is_set():
            raise WebsocketClosing("the websocket is closing")
        protocol.send_binary(data)
        writes = protocol.data_to_send()
        return writes[0] if len(writes) == 1 else b"".join(writes)

    async def send_message(self, data: bytes) -> None:
        """Send *data* as one binary message. Raises :class:`WebsocketClosing` once
        the websocket is closing, and the stream's errors when the link breaks."""
        await self.stream.send_all(self.encode(data))

    # -- closing -------------------------------------------------------------------
    async def aclose(self, code: int = _NORMAL, reason: str = "") -> None:
        """Send a close frame with *code* (if none was sent), wait a little for the
        peer's (when no other task is receiving), and close the stream."""
        protocol = self._protocol
        reason = reason.encode()[:120].decode(errors="ignore")  # a close frame carries 123 bytes at most
        try:
            with trio.move_on_after(_CLOSE_GRACE) as scope:
                scope.shield = True
                if self._ended.is_set():
                    return  # closed from the other side, failed, or the link ended
                if protocol.state is _OPEN:
                    if self.closed is None:
                        self.closed = CloseReason(code, reason)
                    protocol.send_close(code, reason)
                    await self.stream.send_all(b"".join(protocol.data_to_send()))
                if self._receiving:
                    await self._ended.wait()
                else:
                    while await self.receive_message() is not None:
                        pass  # messages after our close are dropped
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, OSError):
            pass
        except WebSocketException:  # a close code that may not be sent (1005, 1006): no close frame
            pass
        finally:
            await trio.aclose_forcefully(self.stream)


async def accept_websocket(stream: NowaitWriter, *, max_message_size: int) -> WebsocketConnection:
    """Read the HTTP upgrade request from *stream* and accept it (any path, no
    subprotocol, no extension). A request that is not a websocket upgrade is
    answered with an HTTP error status (426 Upgrade Required without the upgrade
    headers, 400 for a malformed one, 431 past 64 KiB) and :class:`HandshakeFailed`
    raised; the caller closes the stream and bounds the time."""
    protocol = ServerProtocol(max_size=max_message_size, logger=_LOG)
    seen = 0
    request: Request | None = None
    early: list[Frame | Request | Response] = []  # frames that came with the request
    while request is None:
        data = await stream.receive_some(_RECEIVE_SIZE)
        if not data:
            raise HandshakeFailed("the peer closed before its upgrade request")
        seen += len(data)
        protocol.receive_data(data)
        events = protocol.events_received()
        for index, event in enumerate(events):
            if isinstance(event, Request):
                request, early = event, events[index + 1 :]
                break
        if request is None and protocol.handshake_exc is not None:
            await _send_status(stream, protocol.reject(400, f"Bad Request: {protocol.handshake_exc}\n"))
            raise HandshakeFailed(f"not an HTTP request: {protocol.handshake_exc}")
        if request is None and seen > _MAX_UPGRADE:
            await _send_status(stream, protocol.reject(431, "upgrade request too large\n"))
            raise HandshakeFailed("upgrade request too large")
    response = protocol.accept(request)
    protocol.send_response(response)
    await stream.send_all(b"".join(protocol.data_to_send()))
    if protocol.state is not _OPEN:
        raise HandshakeFailed(f"not a websocket upgrade: HTTP {response.status_code}: {protocol.handshake_exc}")
    connection = WebsocketConnection(stream, protocol)
    if early:
        await connection._handle(early)
    return connection


async def _send_status(stream: NowaitWriter, response: Response) -> None:
    head = f"HTTP/1.1 {response.status_code} {response.reason_phrase}\r\n"
    headers = "".join(f"{name}: {value}\r\n" for name, value in response.headers.raw_items())
    try:
        await stream.send_all((head + headers + "\r\n").encode() + (response.body or b""))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


async def connect_websocket(
    stream: NowaitWriter, host: str, path: str = "/", *, max_message_size: int
) -> WebsocketConnection:
    """Send the HTTP upgrade request for *path* on *host* (``host[:port]``) over
    *stream* and wait for the 101; :class:`HandshakeFailed` if the server refuses
    (naming its status) or answers something else."""
    protocol = ClientProtocol(parse_uri(f"ws://{host}{path}"), max_size=max_message_size, logger=_LOG)
    protocol.send_request(protocol.connect())
    await stream.send_all(b"".join(protocol.data_to_send()))
    seen = 0
    while True:
        data = await stream.receive_some(_RECEIVE_SIZE)
        if not data:
            raise HandshakeFailed("the server closed during the websocket handshake")
        seen += len(data)
        protocol.receive_data(data)
        events = protocol.events_received()
        for index, event in enumerate(events):
            if isinstance(event, Response):
                if protocol.state is not _OPEN:
                    raise HandshakeFailed(f"websocket upgrade refused: HTTP {event.status_code}")
                connection = WebsocketConnection(stream, protocol)
                await connection._handle(events[index + 1 :])  # frames that came with the 101
                return connection
        if protocol.handshake_exc is not None:
            raise HandshakeFailed(f"bad websocket handshake answer: {protocol.handshake_exc}")
        if seen > _MAX_UPGRADE:
            raise HandshakeFailed("websocket handshake answer too large")

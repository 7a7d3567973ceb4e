"""Refuse an oversized websocket frame from its header, before its bytes arrive.

A websocket connection counts a message's bytes as they come, so a frame header
announcing 2^63 bytes, followed by a trickle, would only be refused after
``max_message_size`` bytes have arrived (or never, if the peer stops). :class:`FrameGuard`
sits between the socket and the :class:`~.wsconnection.WebsocketConnection` on a
server connection: it reads the RFC 6455 frame
headers in the bytes going up (after the HTTP upgrade request), and when one
announces more than the limit it sends the close frame itself (code 1009, message
too big) and ends the stream, so the connection closes at once.

Its base, :class:`NowaitWriter` (alone under a client connection), lets the
connection write a message without waiting (``WebsocketTransport.send_nowait``): a
non-blocking write when no send is under way, whose unwritten rest goes first on the
next send, so the answer to a request leaves from the task that made it instead of
waking the connection's writer task for every message.
"""

from __future__ import annotations

import os
from typing import Final

import trio

__all__ = ["FrameGuard", "GuardedListener", "NowaitWriter"]

_END_OF_HTTP: Final = b"\r\n\r\n"
_MAX_HTTP: Final = 64 * 1024  # past this, the upgrade is refused (wsconnection.py)
_TOO_BIG_CLOSE: Final = b"\x88\x02\x03\xf1"  # FIN + close, 2 bytes, code 1009
_MAX_HEADER: Final = 14  # 2 + 8 (64-bit length) + 4 (mask)
_RECEIVE_SIZE: Final = 64 * 1024


class NowaitWriter(trio.abc.Stream):
    """The stream under a websocket connection, which may also write to it without
    waiting (:meth:`write_nowait`); reading from a plain socket waits first, then
    reads; everything else passes through."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._send_lock = trio.StrictFIFOLock()
        self._pending = b""  # the rest of a write_nowait the socket did not take
        self._refused = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        socket_stream = self.stream
        if not isinstance(socket_stream, trio.SocketStream):
            return await socket_stream.receive_some(max_bytes)
        # a plain socket: wait first, then read (a reader almost always comes before
        # its data, and trying first costs a refused read every time; streams.py)
        sock = socket_stream.socket
        if sock.fileno() == -1:
            raise trio.ClosedResourceError("the socket is closed")
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                return os.read(sock.fileno(), max_bytes or _RECEIVE_SIZE)
            except BlockingIOError:
                continue

    # -- sending and closing --------------------------------------------------------
    def write_nowait(self, data: bytes) -> bool | None:
        """Write *data* now, without waiting, if no send is under way and the stream
        is a plain socket. None: nothing was written (the caller sends it the usual
        way); True: all of it went; False: the socket took part, and the rest goes
        first on the next :meth:`send_all` or :meth:`flush`, so bytes keep their order.
        Raises :class:`OSError` when the socket is broken."""
        socket_stream = self.stream
        if not self.can_write_now or not isinstance(socket_stream, trio.SocketStream):
            return None
        fd = socket_stream.socket.fileno()
        if fd == -1:
            raise OSError("the socket is closed")
        try:
            sent = os.write(fd, data)  # trio's sockets are non-blocking
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return True
        self._pending = data[sent:]
        return False

    @property
    def can_write_now(self) -> bool:
        """Whether :meth:`write_nowait` would write (a socket, nothing pending or
        being sent)."""
        return not (self._pending or self._refused or self._send_lock.locked()) and isinstance(
            self.stream, trio.SocketStream
        )

    async def flush(self) -> None:
        """Send what a partial :meth:`write_nowait` left."""
        async with self._send_lock:
            await self._send_pending()

    async def _send_pending(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, b""
            await self.stream.send_all(pending)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        async with self._send_lock:
            await self._send_pending()
            await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


class FrameGuard(NowaitWriter):
    """A server-side stream that ends itself on a frame header over *max_payload*."""

    def __init__(self, stream: trio.abc.Stream, max_payload: int) -> None:
        super().__init__(stream)
        self._max_payload = max_payload
        self._http: bytes | None = b""  # the upgrade request so far; None once past it
        self._header = b""  # a frame header not complete yet
        self._skip = 0  # payload bytes of the current frame still to come

    # -- receiving ----------------------------------------------------------------
    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._refused:
            raise trio.BrokenResourceError("frame over the size limit")
        data = await super().receive_some(max_bytes)
        if data and self._too_big(data if type(data) is bytes else bytes(data)):
            self._refused = True
            async with self._send_lock:
                with trio.move_on_after(1.0), _suppress_broken():
                    await self._send_pending()  # a frame cut in two would hide the close
                    await self.stream.send_all(_TOO_BIG_CLOSE)
            raise trio.BrokenResourceError("frame over the size limit")
        return data

    def _too_big(self, data: bytes) -> bool:
        """Follow the frame structure through *data*; True at an oversized header."""
        if self._http is not None:
            seen = self._http + data
            end = seen.find(_END_OF_HTTP)
            if end < 0:
                self._http = seen[-len(_END_OF_HTTP) :] if len(seen) <= _MAX_HTTP else None
                return False
            data = seen[end + len(_END_OF_HTTP) :]
            self._http = None
        index = 0
        while index < len(data):
            if self._skip:
                step = min(self._skip, len(data) - index)
                self._skip -= step
                index += step
                continue
            chunk = data[index : index + _MAX_HEADER - len(self._header)]
            header = self._header + chunk
            length, size = _payload_length(header)
            if length is None:  # the rest of the header comes with later bytes
                self._header = header
                index += len(chunk)
                continue
            if length > self._max_payload:
                return True
            index += size - len(self._header)  # this chunk's bytes that were header
            self._header = b""
            self._skip = length
        return False


def _payload_length(header: bytes) -> tuple[int | None, int]:
    """(payload length, header size) of a complete frame header; (None, 0) if more
    bytes are needed."""
    if len(header) < 2:
        return None, 0
    short = header[1] & 0x7F
    masked = header[1] & 0x80
    extra = 2 if short == 126 else 8 if short == 127 else 0
    size = 2 + extra + (4 if masked else 0)
    if len(header) < size:
        return None, 0
    if short == 126:
        return int.from_bytes(header[2:4], "big"), size
    if short == 127:
        return int.from_bytes(header[2:10], "big"), size
    return short, size


class _suppress_broken:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, value: object, traceback: object) -> bool:
        return isinstance(value, (trio.BrokenResourceError, trio.ClosedResourceError, OSError))


class GuardedListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose accepted streams are wrapped in a :class:`FrameGuard`."""

    def __init__(self, listener: trio.abc.Listener[trio.abc.Stream], max_payload: int) -> None:
        self.listener = listener
        self._max_payload = max_payload

    async def accept(self) -> trio.abc.Stream:
        return FrameGuard(await self.listener.accept(), self._max_payload)

    async def aclose(self) -> None:
        await self.listener.aclose()

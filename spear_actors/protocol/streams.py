"""Stream transports: length-prefixed frames (:mod:`.framing`) over a trio byte stream
(TCP, unix socket, TLS), and the unix-socket listener.
"""

from __future__ import annotations

import contextlib
import os
import socket as stdlib_socket
from typing import Final

import trio

from .framing import CLOSE_FRAME, DEFAULT_MAX_FRAME_SIZE, FrameDecoder
from .transport_base import Transport, _lost

__all__ = ["SocketTransport", "StreamTransport", "open_unix_listener", "stream_transport"]

# 64 KiB, not more: a read buffer of 128 KiB or more is above glibc's mmap threshold,
# and each read then maps and unmaps it (measured here: ~10 µs per read, against ~1).
_RECEIVE_SIZE: Final = 64 * 1024


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

    @property
    def has_buffered(self) -> bool:
        """Bytes have been read that are not yet returned as a body (another body of
        the same read may follow)."""
        return self.decoder.buffered > 0

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

"""Sans-IO length-prefixed framing for stream transports (TCP, unix sockets).

A frame is an 8-byte little-endian unsigned length followed by that many bytes of
body. A zero-length frame announces an orderly close. Nothing here touches a
socket: feed bytes in with :meth:`FrameDecoder.feed`, take bodies out with
:meth:`FrameDecoder.next_body`.
"""

from __future__ import annotations

import struct

from ..errors import ErrorCode, SpearError

__all__ = [
    "AGENT_LINK_MAX_FRAME_SIZE",
    "CLOSE_FRAME",
    "DEFAULT_MAX_FRAME_SIZE",
    "HEADER_SIZE",
    "FrameDecoder",
    "ProtocolError",
    "encode_frame",
]

HEADER_SIZE = 8
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024
AGENT_LINK_MAX_FRAME_SIZE = DEFAULT_MAX_FRAME_SIZE + 64 * 1024
"""The frame limit of a node's links to its agents: 64 KiB above a client's, so that
an ``invoke`` the gateway accepted always fits, wrapped in its ``execute`` request,
on the hop to the agent (docs/protocol.md §11)."""
CLOSE_FRAME = b"\x00" * HEADER_SIZE
_HEADER = struct.Struct("<Q")


class ProtocolError(SpearError):
    """A peer broke the wire protocol; the connection cannot continue."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.PROTOCOL_ERROR, message)


def encode_frame(body: bytes) -> bytes:
    """Return *body* with its length header. An empty body would mean close: refused."""
    if not body:
        raise ValueError("an empty body is the close frame; send CLOSE_FRAME instead")
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Turns a byte stream, cut anywhere, into whole frame bodies.

    The length header is checked against *max_frame_size* as soon as its 8 bytes
    are in, so an oversized frame is refused before any of its body is buffered.
    """

    __slots__ = ("_buffer", "_closed", "_expected", "max_frame_size")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if max_frame_size < 1:
            raise ValueError("max_frame_size must be positive")
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._expected: int | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once a close frame has been decoded."""
        return self._closed

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a body."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """Add received bytes. Bytes after a close frame are a :class:`ProtocolError`."""
        if not data:
            return
        if self._closed:
            raise ProtocolError("data received after the close frame")
        self._buffer += data

    def next_body(self) -> bytes | None:
        """Return the next whole body, or None when more bytes are needed.

        After a close frame this returns None forever and :attr:`closed` is True.
        """
        if self._closed:
            return None
        buffer = self._buffer
        if self._expected is None:
            if len(buffer) < HEADER_SIZE:
                return None
            (length,) = _HEADER.unpack_from(buffer)
            if length > self.max_frame_size:
                raise ProtocolError(f"frame of {length} bytes exceeds the maximum of {self.max_frame_size}")
            del buffer[:HEADER_SIZE]
            if length == 0:
                self._closed = True
                if buffer:
                    raise ProtocolError("data received after the close frame")
                return None
            self._expected = length
        expected = self._expected
        if len(buffer) < expected:
            return None
        body = bytes(buffer[:expected])
        del buffer[:expected]
        self._expected = None
        return body

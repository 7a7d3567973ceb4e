"""An agent dialling its node over websocket (``SERVICE_ADDR=ws://host:port/path``),
for agents that run in another container or on another machine.

The agent link speaks length-prefixed frames over a stream socket; a node's
websocket listener carries one binary message per frame body. :class:`WebSocketStream`
sits between them: it has the socket methods the link uses (``recv``, ``send``,
``sendall``, ``settimeout``, ``shutdown``, ``close``) and turns frames into messages and back,
with :mod:`wsproto` driven synchronously over a plain (or TLS) socket. The link reads
from one thread and writes from others: wsproto's state is guarded by one lock,
writes to the socket by another (never taken in the other order).
"""

from __future__ import annotations

import socket
import ssl
import threading
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from ..protocol.framing import AGENT_LINK_MAX_FRAME_SIZE, HEADER_SIZE

__all__ = ["WebSocketStream", "dial_websocket"]

_RECEIVE_SIZE = 65536
_HANDSHAKE_TIMEOUT_S = 10.0


def dial_websocket(address: str) -> WebSocketStream:
    """Connect to ``ws://host:port/path`` (``wss://`` verified against the system's
    trusted CAs) and finish the websocket handshake; SystemExit if it fails."""
    parts = urlsplit(address)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise SystemExit(f"spear agent: bad websocket SERVICE_ADDR {address!r}")
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    try:
        sock = socket.create_connection((parts.hostname, port), timeout=_HANDSHAKE_TIMEOUT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if parts.scheme == "wss":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=parts.hostname)
        host = parts.netloc.rpartition("@")[2]
        stream = WebSocketStream(sock, host, parts.path or "/")
        sock.settimeout(None)
    except (OSError, ssl.SSLError) as exc:
        raise SystemExit(f"spear agent: cannot connect to {address}: {exc}") from None
    return stream


class WebSocketStream:
    """A websocket client connection that looks like a stream socket of
    length-prefixed frames to the agent link."""

    def __init__(self, sock: socket.socket, host: str, path: str) -> None:
        self._sock = sock
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._state_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._inbound = bytearray()  # frames (header + body) ready for recv
        self._message = bytearray()  # a message arriving in parts
        self._outbound = bytearray()  # frame bytes not yet a whole frame
        self._ended = False
        self._sock.sendall(self._ws.send(Request(host=host, target=path)))
        while True:
            data = self._sock.recv(_RECEIVE_SIZE)
            if not data:
                raise OSError("closed during the websocket handshake")
            self._ws.receive_data(data)
            for event in self._ws.events():
                if isinstance(event, AcceptConnection):
                    return
                if isinstance(event, RejectConnection | RejectData):
                    status = getattr(event, "status_code", "")
                    raise OSError(f"websocket handshake refused {status}".strip())

    # -- the socket methods the agent link uses ------------------------------------
    def recv(self, size: int) -> bytes:
        """Up to *size* bytes of length-prefixed frames; b"" once the link has ended."""
        while not self._inbound:
            if self._ended:
                return b""
            data = self._sock.recv(_RECEIVE_SIZE)
            replies = self._received(data)
            if replies:
                with self._write_lock:
                    self._sock.sendall(replies)
        chunk = bytes(self._inbound[:size])
        del self._inbound[:size]
        return chunk

    def sendall(self, data: bytes) -> None:
        """Send whole frames as binary messages (a partial frame waits for the rest;
        the empty close frame closes the websocket)."""
        with self._write_lock:
            self._outbound += data
            wire = bytearray()
            while len(self._outbound) >= HEADER_SIZE:
                length = int.from_bytes(self._outbound[:HEADER_SIZE], "little")
                end = HEADER_SIZE + length
                if len(self._outbound) < end:
                    break
                body = bytes(self._outbound[HEADER_SIZE:end])
                del self._outbound[:end]
                with self._state_lock:
                    if self._ws.state is not ConnectionState.OPEN:
                        raise BrokenPipeError("websocket closed")
                    if length == 0:
                        wire += self._ws.send(CloseConnection(code=1000, reason="agent closing"))
                    else:
                        wire += self._ws.send(BytesMessage(data=body))
            if wire:
                self._sock.sendall(wire)

    def send(self, data: bytes, flags: int = 0) -> int:
        """The link's try-without-waiting write: always "would block", so the bytes go
        through the writer thread's :meth:`sendall` (a websocket frame is written whole
        or not at all, and this must never wait)."""
        raise BlockingIOError("websocket: frames are written by sendall")

    def settimeout(self, timeout: float | None) -> None:
        """As :meth:`socket.socket.settimeout`."""
        self._sock.settimeout(timeout)

    def shutdown(self, how: int) -> None:
        """As :meth:`socket.socket.shutdown`."""
        self._sock.shutdown(how)

    def close(self) -> None:
        """Close the socket (the node sees the websocket end)."""
        self._sock.close()

    # -- helpers ---------------------------------------------------------------------
    def _received(self, data: bytes) -> bytes:
        """Feed *data* to wsproto; queue whole messages as frames; return what must be
        answered (pongs, the close reply)."""
        replies = bytearray()
        with self._state_lock:
            self._ws.receive_data(data or None)
            if not data:
                self._ended = True
            for event in self._ws.events():
                if isinstance(event, BytesMessage):
                    self._message += event.data
                    if len(self._message) > AGENT_LINK_MAX_FRAME_SIZE:
                        self._ended = True  # the link reports the short read as a closed link
                        break
                    if event.message_finished:
                        self._inbound += len(self._message).to_bytes(HEADER_SIZE, "little") + self._message
                        self._message = bytearray()
                elif isinstance(event, Ping):
                    replies += self._ws.send(event.response())
                elif isinstance(event, CloseConnection):
                    if self._ws.state is ConnectionState.REMOTE_CLOSING:
                        replies += self._ws.send(event.response())
                    self._ended = True
                elif isinstance(event, TextMessage):
                    self._ended = True  # the protocol is binary: a text message ends the link
        return bytes(replies)

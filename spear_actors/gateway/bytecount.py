"""Bytes in and out per gateway listener, read from the kernel (Linux ``TCP_INFO``:
``tcpi_bytes_received`` and ``tcpi_bytes_acked``) when a connection closes and, for
the connections still open, when the node is scraped: the per-call path does no
counting at all. Bytes are the TCP payload (websocket and TLS framing included).
Unix-socket listeners, and systems without ``TCP_INFO``, report nothing."""

from __future__ import annotations

import socket
import struct
from typing import Final

import trio

__all__ = ["ByteCounts"]

_TCP_INFO: Final = getattr(socket, "TCP_INFO", None)
_BYTES_AT: Final = 120
"""Offset of ``tcpi_bytes_acked`` (then ``tcpi_bytes_received``) in ``struct tcp_info``."""
_LENGTH: Final = _BYTES_AT + 16


def _socket_bytes(sock: trio.socket.SocketType) -> tuple[int, int] | None:
    """(received, sent) of a TCP socket, or None if the kernel does not say."""
    if _TCP_INFO is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _LENGTH)
    except OSError:
        return None
    if len(info) < _LENGTH:
        return None
    sent, received = struct.unpack_from("<QQ", info, _BYTES_AT)
    return received, sent


class ByteCounts:
    """Bytes received and sent per listener, over closed and open connections."""

    def __init__(self) -> None:
        self._closed: dict[str, list[int]] = {}
        self._open: dict[trio.socket.SocketType, str] = {}

    def opened(self, listener: str, sock: trio.socket.SocketType) -> None:
        """A TCP connection of *listener* was accepted."""
        self._open[sock] = listener
        self._closed.setdefault(listener, [0, 0])

    def closing(self, sock: trio.socket.SocketType) -> None:
        """The connection of *sock* is about to be closed: keep its final counts."""
        listener = self._open.pop(sock, None)
        if listener is None:
            return
        counts = _socket_bytes(sock)
        if counts is not None:
            totals = self._closed[listener]
            totals[0] += counts[0]
            totals[1] += counts[1]

    def totals(self) -> dict[str, tuple[int, int]]:
        """Listener → (bytes received, bytes sent) so far."""
        result = {listener: (r, s) for listener, (r, s) in self._closed.items()}
        for sock, listener in list(self._open.items()):
            counts = _socket_bytes(sock)
            if counts is not None:
                received, sent = result[listener]
                result[listener] = (received + counts[0], sent + counts[1])
        return result

"""Byte counts of client connections, for the metrics: a transport wrapper that adds
the length of every body passing through and delegates everything else."""

from __future__ import annotations

from typing import Any

from ..protocol.transports import Transport

__all__ = ["ByteCounts", "MeteredTransport"]


class ByteCounts:
    """Bytes of message bodies received from and sent to clients (framing excluded)."""

    __slots__ = ("received", "sent")

    def __init__(self) -> None:
        self.received = 0
        self.sent = 0


class MeteredTransport:
    """*inner*, counting body bytes into *counts*. Not a Transport subclass on purpose:
    every attribute it does not count (fast-path capabilities included) is the inner
    transport's own, whatever the protocol adds to transports later."""

    def __init__(self, inner: Transport, counts: ByteCounts) -> None:
        self._inner = inner
        self._counts = counts

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def send_bodies(self, bodies: list[bytes]) -> None:
        self._counts.sent += sum(map(len, bodies))
        await self._inner.send_bodies(bodies)

    def send_nowait(self, bodies: list[bytes]) -> bool:
        # bodies the transport keeps are sent by a later send_bodies without being
        # passed again: counted once, here
        self._counts.sent += sum(map(len, bodies))
        return self._inner.send_nowait(bodies)

    async def receive_body(self) -> bytes | None:
        body = await self._inner.receive_body()
        if body is not None:
            self._counts.received += len(body)
        return body

    def receive_buffered(self) -> bytes | None:
        body = self._inner.receive_buffered()
        if body is not None:
            self._counts.received += len(body)
        return body

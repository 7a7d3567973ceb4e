"""Ordered sending over one transport, for a connection's trio driver.

Every body a connection sends goes through its :class:`Outbox` and leaves in the
order it was put in. Each body gets a *ticket* (1, 2, 3, ...); :attr:`Outbox.written`
is the highest ticket fully handed to the transport.

Only the writer task (:meth:`Outbox.run_writer`) ever waits for the link. A sender
writes at once, without waiting, when nothing is queued before it and the link
takes the bytes (a socket with room: the common case, with no hand-off to another
task); whatever the link does not take at once (the rest of a frame, later bodies)
goes to the writer task, which sends everything queued since its last write in one
write. So no sender is ever held by other tasks' data, a sender may stop waiting for
its own body at any time (cancelled, past its deadline: :meth:`Outbox.withdraw` takes
it back if no byte of it left), and a task that reads never stops reading to write.

Over a transport that cannot write without waiting (``tls://``, on trio's
``SSLStream``), every body goes through the writer task: a write cut by a cancel
would break the stream, so no other task ever writes there, and nobody needs a
shield. A websocket (``ws://``, and ``wss://`` over :class:`~.tlssocket.TlsSocketStream`,
which encrypts at once and keeps the ciphertext's order) writes without waiting
like a socket (``WebsocketTransport.send_nowait``: the websocket connection encodes,
one non-blocking write).
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import trio

from ..errors import SpearError
from .transports import SocketTransport, Transport, WebsocketTransport

__all__ = ["Outbox"]


class Outbox:
    """The send side of one connection. *on_lost* is told when the transport fails
    a write (the connection then closes and calls :meth:`close`)."""

    def __init__(self, transport: Transport, *, high_water: int, on_lost: Callable[[SpearError], None]) -> None:
        self._transport = transport
        self._direct: SocketTransport | WebsocketTransport | None = None
        if isinstance(transport, SocketTransport) or (
            isinstance(transport, WebsocketTransport) and transport.can_send_nowait
        ):
            self._direct = transport
        self._high_water = high_water
        self._on_lost = on_lost
        self._queue: collections.deque[tuple[int, bytes]] = collections.deque()
        self.queued_bytes = 0
        """Bytes queued and not yet taken by a write."""
        self._tickets = 0
        self.written = 0
        """The highest ticket whose body has been handed to the transport in full."""
        self._kept = False  # the transport holds the rest of a direct write
        self._busy = False  # a write that may wait is under way
        self.write_started: float | None = None
        """trio time at which the write under way began (None: no write is waiting)."""
        self._ready = trio.Event()  # the writer task has work
        self._progress = trio.Event()  # a write ended
        self.closed = False

    # -- sending ---------------------------------------------------------------
    def put(self, body: bytes, *, defer: bool = False) -> int:
        """Send *body* now if the link takes it without waiting, else queue it for the
        writer task; never waits. Returns its ticket.

        *defer*: queue it for the writer task, even if the link would take it now (a
        body put in the same pass, or else the writer a pass later, carries it).
        Raises the transport's :class:`SpearError` if the link is gone.
        """
        self._tickets += 1
        ticket = self._tickets
        if self.closed:
            return ticket
        if defer or self._busy or self._kept or self._direct is None:
            self._queue.append((ticket, body))
            self.queued_bytes += len(body)
            self._ready.set()
            return ticket
        bodies = [body] if not self._queue else [*self._take(), body]
        try:
            done = self._direct.send_nowait(bodies)
        except SpearError as exc:
            self._on_lost(exc)
            raise
        if done:
            self.written = ticket
        else:
            self._kept = True  # the transport sends the rest first, on the writer's next write
            self._ready.set()
        return ticket

    def withdraw(self, ticket: int) -> bool:
        """Take back a queued body none of which has left; False when (part of) it
        was written already or is being written."""
        for index, (queued, body) in enumerate(self._queue):
            if queued == ticket:
                del self._queue[index]
                self.queued_bytes -= len(body)
                if not self._queue and not self._busy and not self._kept:
                    self.written = self._tickets  # the rest is written
                return True
        return False

    async def wait_written(self, ticket: int) -> None:
        """Wait until the body of *ticket* has been handed to the transport (or the
        outbox closed). Cancelling the wait leaves the body queued."""
        while self.written < ticket and not self.closed:
            await self._progress.wait()

    async def wait_room(self) -> None:
        """Wait while more than the high-water mark is queued (or the outbox closed)."""
        while self.queued_bytes > self._high_water and not self.closed:
            await self._progress.wait()

    async def flush(self) -> None:
        """Wait until everything put so far has been written (or the outbox closed)."""
        await self.wait_written(self._tickets)

    # -- the writer task -----------------------------------------------------------
    async def run_writer(self) -> None:
        """Send what is queued, in batches, until closed."""
        while True:
            await self._ready.wait()
            self._ready = trio.Event()
            if self.closed:
                return
            if not self._queue and not self._kept:
                continue
            if not await self._write(self._take(), self._tickets):
                return

    async def _write(self, bodies: list[bytes], upto: int) -> bool:
        self._busy = True
        self.write_started = trio.current_time()
        try:
            await self._transport.send_bodies(bodies)
        except SpearError as exc:
            self._on_lost(exc)
            return False
        finally:
            self._busy = False
            self.write_started = None
        self._kept = False
        # with nothing queued, every ticket is written or was withdrawn
        self.written = max(self.written, upto) if self._queue else self._tickets
        progress, self._progress = self._progress, trio.Event()
        progress.set()
        if self._queue:
            self._ready.set()
        return True

    def close(self) -> None:
        """Stop: wake every waiting sender and the writer (nothing more is written)."""
        self.closed = True
        self._progress.set()
        self._ready.set()

    def _take(self) -> list[bytes]:
        batch = [body for _, body in self._queue]
        self._queue.clear()
        self.queued_bytes = 0
        return batch

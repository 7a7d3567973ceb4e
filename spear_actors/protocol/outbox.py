"""Ordered sending over one transport, for a :class:`~.connection.Connection`.

Every encoded message a connection sends goes through its :class:`Outbox`, and
leaves in the order it was put in. A message is written at once by the task that
sends it when nothing is queued and the link takes it without waiting: a hand-off to
another task costs a pass of trio's run loop. Otherwise it is queued, and the writer
task (:meth:`Outbox.run_writer`) sends everything queued since its last write in one
write; a task that is already writing also sends what queued up behind it.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from ..errors import SpearError
from .transports import Transport

__all__ = ["Outbox"]


class Outbox:
    """The send side of one connection.

    *check_open* raises the connection's closing error when it is closed;
    *on_lost* is told when the transport fails a write (the connection then closes,
    and calls :meth:`close`).
    """

    def __init__(
        self,
        transport: Transport,
        *,
        high_water: int,
        check_open: Callable[[], None],
        on_lost: Callable[[SpearError], None],
    ) -> None:
        self._transport = transport
        self._high_water = high_water
        self._check_open = check_open
        self._on_lost = on_lost
        self._queue: list[bytes] = []
        self._queued_bytes = 0
        self._ready = trio.Event()  # something is queued for the writer task
        self._drained = trio.Event()  # the queue was taken (room for waiting senders)
        self._sent = trio.Event()  # a write ended
        self._writing = False
        self._writing_directly = False
        self._closed = False

    def put_nowait(self, body: bytes) -> None:
        """Queue *body* without waiting for room (control messages, final answers)."""
        self._queue.append(body)
        self._queued_bytes += len(body)
        if not self._writing_directly:  # a direct writer sends it, or hands it over
            self._ready.set()

    async def send(self, body: bytes, before_waiting: Callable[[], None] | None = None) -> None:
        """Send *body*, first waiting while more than the high-water mark is queued.

        *before_waiting* is called before this task would first wait (for room, or
        for a write the link does not take at once). Raises the connection's error
        if it is closed, or the transport's :class:`SpearError` if this task's own
        write fails.
        """
        while self._queued_bytes > self._high_water:
            self._check_open()
            if before_waiting is not None:
                before_waiting()
            await self._drained.wait()
        self._check_open()
        if self._writing:
            self.put_nowait(body)
            return
        try:
            if self._transport.send_nowait([*self._take(), body]):
                return
        except SpearError as exc:
            self._on_lost(exc)
            raise
        # The rest, kept by the transport, goes out with this task's next write.
        if before_waiting is not None:
            before_waiting()
        # Shielded, because a frame cut in half by a cancel would corrupt the stream;
        # a blocked write still ends when the connection dies (heartbeat, close),
        # which closes the transport under it.
        self._writing = self._writing_directly = True
        try:
            with trio.CancelScope(shield=True):
                batch: list[bytes] = []
                while True:
                    await self._transport.send_bodies(batch)
                    # What other tasks queued while this write was under way goes
                    # out now, rather than one or two passes later from the writer.
                    batch = self._take()
                    if not batch:
                        break
        except SpearError as exc:
            self._on_lost(exc)
            raise
        finally:
            self._writing = self._writing_directly = False
            self._wrote()
            if self._queue:
                self._ready.set()

    async def flush(self) -> None:
        """Wait until everything queued so far has been written (or the outbox closed)."""
        while (self._queue or self._writing) and not self._closed:
            await self._sent.wait()

    async def run_writer(self) -> None:
        """The writer task: send what is queued, in batches, until closed."""
        while True:
            await self._ready.wait()
            if self._closed:
                return
            while self._writing:  # a sender is writing directly (see send)
                await self._sent.wait()
            self._ready = trio.Event()
            batch = self._take()
            if not batch:
                continue
            self._writing = True
            try:
                await self._transport.send_bodies(batch)
            except SpearError as exc:
                self._on_lost(exc)
                return
            finally:
                self._writing = False
                self._wrote()

    def close(self) -> None:
        """Stop: wake every waiting sender and the writer (nothing more is written)."""
        self._closed = True
        self._drained.set()
        self._sent.set()
        self._ready.set()

    def _take(self) -> list[bytes]:
        batch, self._queue, self._queued_bytes = self._queue, [], 0
        if batch:
            drained, self._drained = self._drained, trio.Event()
            drained.set()
        return batch

    def _wrote(self) -> None:
        sent, self._sent = self._sent, trio.Event()
        sent.set()

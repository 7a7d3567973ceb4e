"""Per-request state of a :class:`~.connection.Connection`, on both sides.

:class:`ResponseStream` is the caller's view of a stream answer (items, credit);
:class:`IncomingRequest` is the callee's view of a request it serves (params,
credit for the items it sends, its cancel scope); ``_PendingCall`` is the caller's
slot for a unary answer.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from ..errors import ErrorCode, SpearError
from .framing import ProtocolError
from .messages import Credit, Request, StreamItem

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Handler", "IncomingRequest", "ResponseStream"]

Handler = Callable[["IncomingRequest"], Awaitable[Any]]
"""Serves one incoming request: returns the result or raises :class:`SpearError`."""


class _PendingCall:
    """The caller's side of a unary request: an event and its outcome."""

    __slots__ = ("error", "event", "result")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.result: Any = None
        self.error: SpearError | None = None

    def resolve(self, result: Any) -> None:
        if not self.event.is_set():
            self.result = result
            self.event.set()

    def fail(self, error: SpearError) -> None:
        if not self.event.is_set():
            self.error = error
            self.event.set()


class ResponseStream:
    """The items of a stream request, in order, as an async iterator.

    Iteration ends after the last item when the stream ended well (:attr:`result`
    then holds the final value), or raises the terminal :class:`SpearError` after the
    items that came before it. Consuming items grants the peer new credit, so at
    most ``window`` items are ever buffered here.
    """

    def __init__(self, connection: Connection, request_id: int, window: int, deadline: float) -> None:
        self._connection = connection
        self.request_id = request_id
        self.window = window
        self._deadline = deadline
        self._items: collections.deque[Any] = collections.deque()
        self._event = trio.Event()
        self._next_seq = 0
        self._consumed = 0
        self._credit_every = max(1, window // 2)
        self.finished = False
        """True once the end or an error has arrived."""
        self.result: Any = None
        """The ``result`` of the stream_end message, once iteration has ended."""
        self._error: SpearError | None = None

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> Any:
        while not self._items:
            if self.finished:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._event = trio.Event()
            with trio.move_on_at(self._deadline):
                await self._event.wait()
                continue
            self._connection._give_up(self.request_id, "deadline exceeded")
            self.fail(SpearError(ErrorCode.DEADLINE_EXCEEDED, "stream deadline exceeded"))
        item = self._items.popleft()
        self._consumed += 1
        if self._consumed >= self._credit_every and not self.finished:
            self._connection._send_nowait(Credit(self.request_id, self._consumed))
            self._consumed = 0
        return item

    # -- fed by the connection's reader --------------------------------------
    def _push(self, message: StreamItem) -> None:
        if message.seq != self._next_seq:
            raise ProtocolError(f"stream {self.request_id}: item seq {message.seq}, expected {self._next_seq}")
        if len(self._items) >= self.window:
            raise ProtocolError(f"stream {self.request_id}: peer sent more items than its credit")
        self._next_seq += 1
        self._items.append(message.data)
        self._event.set()

    async def wait_finished(self) -> None:
        """Wait for the end or the error, without consuming items (they are dropped:
        this is for a consumer that has left)."""
        while not self.finished:
            self._items.clear()
            self._event = trio.Event()
            await self._event.wait()

    def end(self, result: Any) -> None:
        if not self.finished:
            self.finished = True
            self.result = result
            self._event.set()

    def fail(self, error: SpearError) -> None:
        if not self.finished:
            self.finished = True
            self._error = error
            self._event.set()


class IncomingRequest:
    """A request from the peer, as seen by the handler serving it."""

    def __init__(self, connection: Connection, message: Request) -> None:
        self.connection = connection
        self.id = message.id
        self.method = message.method
        self.params = message.params
        self.timeout_ms = message.timeout_ms
        self.is_stream = message.window is not None
        self._credit = message.window or 0
        self._credit_event: trio.Event | None = None  # made when a producer waits for credit
        self._sent = 0
        self.cancel_scope = trio.CancelScope()
        self.cancel_reason: str | None = None
        """Set when the peer cancelled this request (with the reason it gave)."""

    @property
    def items_sent(self) -> int:
        """How many stream items the handler has sent so far."""
        return self._sent

    async def send_item(self, data: Any) -> None:
        """Send one stream item, first waiting for the consumer's credit."""
        if not self.is_stream:
            raise SpearError(ErrorCode.FAILED_PRECONDITION, f"{self.method}: request is not a stream")
        while self._credit <= 0:
            self._credit_event = trio.Event()
            await self._credit_event.wait()
        self._credit -= 1
        seq = self._sent
        self._sent += 1
        await self.connection._send(StreamItem(self.id, seq, data))

    def _add_credit(self, n: int) -> None:
        self._credit += n
        if self._credit_event is not None:
            self._credit_event.set()

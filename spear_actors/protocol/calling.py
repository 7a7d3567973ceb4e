"""The calling role of a trio connection: requests, streams, and callers that read.

A call puts its request through the core (which numbers it) and the outbox, then
waits for its answer, which the reader task hands over. Its deadline covers
everything from the wait for room in the send queue to the answer; a caller that
gives up before any byte of its request left takes the request back, otherwise it
sends a cancel.

**Callers that read (the one fast path of this role).** Waiting for the reader task
to wake the caller costs one more pass of trio's run loop per call. So, on a
connection that serves no requests over a plain socket, a caller whose request has
been *fully written* may *lead*: read the link itself until its answer has come,
dispatching whatever else arrives. One leader at a time; the reader task reads only
while nobody leads, and waits for data without taking it (``wait_readable``), so a
leader takes over at once by cancelling that wait. A caller leads only after its
send completed, so while any task waits to write, someone reads.

While a caller leads, the reader task is parked. A lead that ends with other calls
still waiting wakes it at once (they need a reader); one that ends with nothing else
in flight lets it sleep on for up to :data:`READER_RESUME_AFTER` seconds, so that
calls made one after another (the usual case on an agent link: the next call leads
again) do not wake it twice each (cancelled out of its wait, then woken when the lead
ends). Meanwhile nothing is awaited from the peer but its pings and its close, which
wait in the socket for the next leader or for the reader's return.
"""

from __future__ import annotations

import collections
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from ..errors import ErrorCode, SpearError
from .core import ConnectionClosed, ErrorReceived, Event, ItemReceived, ResponseReceived
from .framing import ProtocolError
from .link import Link
from .transports import SocketTransport

__all__ = ["READER_RESUME_AFTER", "Caller", "RelayedCall", "ResponseStream"]

READER_RESUME_AFTER = 0.02
"""Seconds the reader task may stay parked after a lead ended with no call in flight."""


class _PendingCall:
    """The caller's side of a unary request: its outcome, and an event to wait for it
    (made only when the caller waits: a caller that leads reads its answer itself)."""

    __slots__ = ("_event", "done", "error", "id", "result", "ticket")

    def __init__(self) -> None:
        self.id = 0  # set once the core numbered the request
        self.ticket = 0  # the outbox's ticket for its body
        self.done = False
        self._event: trio.Event | None = None
        self.result: Any = None
        self.error: SpearError | None = None

    def end(self, result: Any) -> None:
        if not self.done:
            self.result = result
            self._answered()

    def fail(self, error: SpearError) -> None:
        if not self.done:
            self.error = error
            self._answered()

    def _answered(self) -> None:
        self.done = True
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        """Until answered (not a checkpoint when it already is: callers check first)."""
        if not self.done:
            if self._event is None:
                self._event = trio.Event()
            await self._event.wait()


class RelayedCall:
    """A unary request whose answer goes to a callback (:meth:`Caller.relay`), from
    the task that reads it: nobody waits for it."""

    __slots__ = ("_cancel_grace", "_confirmed", "_connection", "_on_answer", "done", "id", "method", "ticket")

    def __init__(
        self,
        connection: Caller,
        method: str,
        on_answer: Callable[[Any, SpearError | None], None],
        cancel_grace: float | None = None,
    ) -> None:
        self._connection = connection
        self.method = method
        self._on_answer: Callable[[Any, SpearError | None], None] | None = on_answer
        """Dropped once the call is over: a callback that holds this call (a closure
        over it) is then no reference cycle left for the garbage collector."""
        self._cancel_grace = cancel_grace
        self._confirmed: trio.Event | None = None  # made by cancel(), set by the answer
        self.id = 0
        self.ticket = 0
        self.done = False
        """True once answered or given up."""

    def end(self, result: Any) -> None:
        if not self.done:
            self._ended()(result, None)

    def fail(self, error: SpearError) -> None:
        if not self.done:
            self._ended()(None, error)

    def _ended(self) -> Callable[[Any, SpearError | None], None]:
        """Over, answered: returns the callback to call with the answer."""
        self.done = True
        del self._connection._calls[self.id]  # the core has forgotten it already
        if self._confirmed is not None:
            self._confirmed.set()
        on_answer, self._on_answer = self._on_answer, None
        assert on_answer is not None
        return on_answer

    def _drop(self, cancel_reason: str | None = None) -> None:
        """Over without an answer (the callback is not called). With *cancel_reason*,
        the peer is told: the request is taken back if none of it was sent, else it
        is sent a cancel."""
        self.done = True
        self._on_answer = None
        connection = self._connection
        # out of the calls first: a cancel that finds the link dead fails every call
        # still there, and this one must not be answered any more
        del connection._calls[self.id]
        if cancel_reason is not None and not connection.closed:
            connection._give_up(self.id, self.ticket, cancel_reason)
        connection.core.forget(self.id)
        if self._confirmed is not None:
            self._confirmed.set()

    def give_up(self, reason: str) -> None:
        """Stop waiting for the answer: the request is taken back if none of it was
        sent, else the peer is sent a cancel; the callback is not called."""
        if not self.done:
            self._drop(reason)

    async def cancel(self, reason: str) -> None:
        """Cancel the call as a cancelled :meth:`Caller.request` is: the request is
        taken back if none of it was sent (the callback is not called); else the peer
        is sent a cancel and, with a cancel grace, this waits up to that long
        (shielded) for the peer to confirm by answering — its answer goes to the
        callback as any answer does. Without a confirmation in time, the connection's
        ``on_unconfirmed_cancel`` is called and the call is given up."""
        if self.done:
            return
        connection = self._connection
        grace = self._cancel_grace
        sent = not connection.closed and connection._give_up(self.id, self.ticket, reason)
        if self.id not in connection._calls:
            return  # the cancel found the link dead: the call has been failed (answered)
        if not sent or grace is None:
            self._drop()
            return
        confirmed = self._confirmed = trio.Event()
        with trio.CancelScope(shield=True) as waiting:
            waiting.deadline = trio.current_time() + grace
            await confirmed.wait()
        if confirmed.is_set():
            return  # confirmed (or the connection died, or given up meanwhile)
        self._drop()
        if not connection.closed and connection.on_unconfirmed_cancel is not None:
            connection.on_unconfirmed_cancel(self.method, self.id)


class ResponseStream:
    """The items of a stream request, in order, as an async iterator.

    Iteration ends after the last item when the stream ended well (:attr:`result`
    then holds the final value), or raises the terminal :class:`SpearError` after the
    items that came before it. Consuming items grants the peer new credit, so at
    most ``window`` items are ever buffered here.
    """

    def __init__(self, connection: Caller, window: int, deadline: float) -> None:
        self._connection = connection
        self.request_id = 0
        """The request's id (set once it is sent)."""
        self.window = window
        self._deadline = deadline
        self._items: collections.deque[Any] = collections.deque()
        self._event = trio.Event()
        self.finished = False
        """True once the end or an error has arrived."""
        self.result: Any = None
        """The ``result`` of the stream_end message, once iteration has ended."""
        self._error: SpearError | None = None

    @property
    def buffered(self) -> int:
        """Items received and not yet taken (never more than ``window``)."""
        return len(self._items)

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
            self._connection._give_up(self.request_id, 0, "deadline exceeded")
            self.fail(SpearError(ErrorCode.DEADLINE_EXCEEDED, "stream deadline exceeded"))
        item = self._items.popleft()
        if not self.finished:
            self._connection._put(self._connection.core.item_taken(self.request_id))
        return item

    async def wait_finished(self) -> None:
        """Wait for the end or the error, without consuming items (they are dropped:
        this is for a consumer that has left)."""
        while not self.finished:
            self._items.clear()
            self._event = trio.Event()
            await self._event.wait()

    # -- fed by the connection -------------------------------------------------------
    def push(self, data: Any) -> None:
        self._items.append(data)
        self._event.set()

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


class Caller(Link):
    """The calling role (see the module docstring)."""

    def _init_calling(self, *, may_lead: bool) -> None:
        self._calls: dict[int, _PendingCall | ResponseStream | RelayedCall] = {}
        socket = self.transport if isinstance(self.transport, SocketTransport) else None
        self._lead_socket = socket if may_lead else None
        self._leader: _PendingCall | None = None
        self._lead_released = trio.lowlevel.ParkingLot()  # the reader, while a caller leads
        self._reader_idle: trio.CancelScope | None = None
        self._reader_parked: trio.CancelScope | None = None
        self._reader_busy = False

    @property
    def in_flight(self) -> int:
        """Outgoing requests and streams awaiting their terminal answer."""
        return len(self._calls)

    async def request(
        self,
        method: str,
        params: Any = None,
        *,
        timeout: float | None = None,
        cancel_grace: float | None = None,
    ) -> Any:
        """Call *method* on the peer and return its result.

        Raises the peer's :class:`SpearError`; DEADLINE_EXCEEDED after *timeout*
        seconds, counted from the call (the deadline also travels to the peer);
        UNAVAILABLE at once if the connection dies. Cancelling the caller sends a
        cancel to the peer (or takes the request back if none of it was sent); with
        *cancel_grace*, the caller then waits up to that long (shielded) for the peer
        to confirm by answering, and :attr:`on_unconfirmed_cancel` is called if it
        does not.
        """
        self._check_open()
        call = _PendingCall()
        outbox = self._outbox
        try:
            # no cancel scope without a timeout: it would cost every call a little
            with _NO_SCOPE if timeout is None else trio.move_on_after(timeout):
                if outbox.queued_bytes > self.config.send_high_water:
                    await outbox.wait_room()
                    self._check_open()
                call.id, body = self.core.request(method, params, timeout_ms=_ms(timeout))
                self._calls[call.id] = call
                call.ticket = outbox.put(body)
                if self._lead_socket is not None:
                    # lead only once the request is out: while it waits to be
                    # written, the reader task reads whatever the peer sends
                    if outbox.written < call.ticket:
                        self._wake_reader()  # someone reads while we wait to write
                        await outbox.wait_written(call.ticket)
                    if self._try_lead(call):
                        try:
                            await self._read_until(call)
                        finally:
                            self._end_lead()
                if not call.done:
                    await call.wait()
            if not call.done:  # the timeout passed
                self._check_open()
                self._give_up(call.id, call.ticket, "deadline exceeded")
                raise SpearError(ErrorCode.DEADLINE_EXCEEDED, f"{method}: no answer within {timeout:g}s")
        except trio.Cancelled:
            if call.id and not call.done:
                sent_cancel = self._give_up(call.id, call.ticket, "caller cancelled")
                if sent_cancel and cancel_grace is not None:
                    with trio.CancelScope(shield=True) as grace:
                        grace.deadline = trio.current_time() + cancel_grace
                        await call.wait()
                    if not call.done and not self.closed and self.on_unconfirmed_cancel is not None:
                        self.on_unconfirmed_cancel(method, call.id)
            raise
        finally:
            if call.id:
                del self._calls[call.id]
                if not call.done:  # else the core has forgotten it already
                    self.core.forget(call.id)
        if call.error is not None:
            raise call.error
        return call.result

    async def relay(
        self,
        method: str,
        params: Any,
        on_answer: Callable[[Any, SpearError | None], None],
        *,
        timeout: float | None = None,
        cancel_grace: float | None = None,
    ) -> RelayedCall:
        """Call *method* on the peer; its answer goes to ``on_answer(result, error)``
        (error None on success; UNAVAILABLE if the connection dies first), called by
        the task that reads it. Waits only while the send queue is over its high
        water. *timeout* travels to the peer, which enforces it; the caller enforces
        its own with :meth:`RelayedCall.give_up`. *cancel_grace* is what
        :meth:`RelayedCall.cancel` waits for the peer's confirmation."""
        self._check_open()
        outbox = self._outbox
        if outbox.queued_bytes > self.config.send_high_water:
            await outbox.wait_room()
            self._check_open()
        call = RelayedCall(self, method, on_answer, cancel_grace)
        call.id, body = self.core.request(method, params, timeout_ms=_ms(timeout))
        self._calls[call.id] = call
        self._wake_reader()  # nobody leads for it: the reader takes its answer
        try:
            call.ticket = outbox.put(body)
        except SpearError:
            pass  # the link is lost: _die has failed the call, on_answer has it
        return call

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        params: Any = None,
        *,
        window: int | None = None,
        timeout: float | None = None,
        cancel_grace: float | None = None,
    ) -> AsyncIterator[ResponseStream]:
        """Call a streaming *method*; yields a :class:`ResponseStream` of its items.

        Leaving the block before the stream has ended cancels it at the peer; with
        *cancel_grace*, the block waits up to that long (shielded) for the peer's
        confirming answer, and :attr:`on_unconfirmed_cancel` is called without one.
        """
        self._check_open()
        window = window or self.config.stream_window
        deadline = _deadline(timeout)
        items = ResponseStream(self, window, deadline)
        request_id = ticket = 0
        try:
            with trio.CancelScope(deadline=deadline) as scope:
                await self._outbox.wait_room()
                self._check_open()
                request_id, body = self.core.request(method, params, timeout_ms=_ms(timeout), window=window)
                items.request_id = request_id
                self._calls[request_id] = items
                self._wake_reader()  # nobody leads for a stream: the reader takes its items
                ticket = self._outbox.put(body)  # its deadline now runs in the iteration
            if scope.cancelled_caught:
                self._check_open()
                if not items.finished:
                    self._give_up(request_id, ticket, "deadline exceeded")
                    items.fail(SpearError(ErrorCode.DEADLINE_EXCEEDED, f"{method}: not sent within {timeout:g}s"))
            yield items
        finally:
            if request_id and not items.finished:
                sent_cancel = self._give_up(request_id, ticket, "consumer left the stream")
                if sent_cancel and cancel_grace is not None and not self.closed:
                    with trio.CancelScope(shield=True) as grace:
                        grace.deadline = trio.current_time() + cancel_grace
                        await items.wait_finished()
                    if not items.finished and not self.closed and self.on_unconfirmed_cancel is not None:
                        self.on_unconfirmed_cancel(method, request_id)
            if request_id:
                self._calls.pop(request_id, None)
                self.core.forget(request_id)

    def _give_up(self, request_id: int, ticket: int, reason: str) -> bool:
        """Stop a request of ours: take it back if none of it was sent, else send a
        cancel. True when a cancel was sent (the peer's confirmation may follow)."""
        if ticket and self._outbox.withdraw(ticket):
            self.core.withdraw(request_id)
            return False
        body = self.core.cancel(request_id, reason)
        self._put(body)
        return body is not None

    # -- answers -------------------------------------------------------------------------
    def _on_answer(self, event: ResponseReceived | ErrorReceived | ItemReceived) -> None:
        waiter = self._calls.get(event.id)
        if waiter is None:
            return
        kind = type(event)
        if kind is ResponseReceived:
            waiter.end(event.result)  # type: ignore[union-attr]
        elif kind is ErrorReceived:
            waiter.fail(event.error)  # type: ignore[union-attr]
        elif isinstance(waiter, ResponseStream):
            waiter.push(event.data)  # type: ignore[union-attr]

    def _fail_calls(self, reason: SpearError) -> None:
        for waiter in list(self._calls.values()):  # a relayed call leaves the dict
            waiter.fail(SpearError(reason.code, reason.message))
        if self._leader is not None and self._lead_socket is not None:
            # wake the leader's read (a cancel scope around each read would cost
            # every call more than this costs the one that dies)
            self._lead_socket.interrupt_receive()

    # -- callers that read their own answer ------------------------------------------
    def _try_lead(self, call: _PendingCall) -> bool:
        if self._lead_socket is None or self._leader is not None or self._reader_busy or self.closed:
            return False
        if call.done:
            return False
        self._leader = call
        if self._reader_idle is not None:
            self._reader_idle.cancel()
        return True

    def _wake_reader(self) -> None:
        """End the reader task's lazy sleep after a lead (see the module docstring)."""
        if self._leader is None and self._reader_parked is not None:
            self._lead_released.unpark_all()

    def _end_lead(self) -> None:
        leader, self._leader = self._leader, None
        if len(self._calls) > 1 or leader is None or not leader.done:
            # other calls wait (or the leader, cancelled, for its confirmation): the
            # reader reads for them now
            self._lead_released.unpark_all()
        elif self._reader_parked is not None and self._reader_parked.deadline == math.inf:
            # nothing else in flight: the next call will most likely lead again
            self._reader_parked.deadline = trio.current_time() + READER_RESUME_AFTER

    async def _read_until(self, call: _PendingCall) -> None:
        """Read and dispatch until *call* is answered (or the connection dies)."""
        socket = self._lead_socket
        assert socket is not None
        core = self.core
        try:
            while not call.done:
                body = await socket.receive_body()
                if body is None:
                    core.receive_body(None, trio.current_time())
                    event = core.next_event()
                else:
                    event = core.event_for(body, trio.current_time())
                if core.has_data_to_send:
                    self._flush_core()
                if event is not None and not self._on_event(event):
                    return
            # what the same read brought in for other callers is theirs now
            while not self.closed and (body := socket.receive_buffered()) is not None:
                event = core.event_for(body, trio.current_time())
                if core.has_data_to_send:
                    self._flush_core()
                if event is not None and not self._on_event(event):
                    return
        except ProtocolError as exc:
            await self._protocol_error(exc)
        except SpearError as exc:
            self._die(exc)

    def _on_event(self, event: Event) -> bool:
        """Act on an event read by a leader; False when the connection closed."""
        kind = type(event)
        if kind is ResponseReceived or kind is ErrorReceived or kind is ItemReceived:
            self._on_answer(event)  # type: ignore[arg-type]
        elif kind is ConnectionClosed:
            assert isinstance(event, ConnectionClosed)
            if event.cause is not None:
                self.transport.closing_because(event.cause)
            self._flush_core()
            self._die(event.error)
            return False
        else:
            self._dispatch(event)
        return True

    async def _receive_as_reader(self) -> bytes | None:
        """The reader task's next body (None: the peer closed), never while a caller leads."""
        socket = self._lead_socket
        if socket is None:
            return await self.transport.receive_body()
        while True:
            body = socket.receive_buffered()
            if body is not None:
                return body
            if self._leader is not None:
                with trio.CancelScope() as self._reader_parked:
                    await self._lead_released.park()
                self._reader_parked = None
                continue
            with trio.CancelScope() as self._reader_idle:
                await socket.wait_readable()
            self._reader_idle = None
            if self._leader is None:  # else a caller took over while we waited
                self._reader_busy = True
                try:
                    return await socket.receive_body()
                finally:
                    self._reader_busy = False


class _NoScope:
    """A do-nothing ``with`` block, where a call has no timeout."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


_NO_SCOPE = _NoScope()


def _deadline(timeout: float | None) -> float:
    return math.inf if timeout is None else trio.current_time() + timeout


def _ms(timeout: float | None) -> int | None:
    """A timeout in whole milliseconds, rounded up (0 only for a timeout of 0 or less)."""
    return None if timeout is None else max(0, math.ceil(timeout * 1000))

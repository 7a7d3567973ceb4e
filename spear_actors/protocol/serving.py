"""The serving role of a trio connection: the reader task and the handlers it starts.

The reader task reads bodies, feeds them to the core and acts on its events. Answers
never wait: the core turns a handler's result into a body and the outbox writes it
at once or queues it for the writer task, so no handler and no reader is ever held
by a peer that does not read. What holds a peer back is that the reader stops
reading while too much is queued for it, or too many of its requests are in service.

**The reader serves what it reads (the one fast path of this role).** A fresh task
per request costs a pass of trio's run loop before the handler starts, and its spawn
more than the rest of a cheap request. So the task that reads a request serves it:
it runs the handler inline and starts its successor as the connection's reader just
before the handler would first wait (:func:`~.inline.run_inline`). A handler that
answers without waiting has its answer written and the same task goes on to the
next request the same read brought in, and then reads again: no task is spawned at
all for such requests (they share the reader's one cancel scope, see
:meth:`Server._reader`), and the answers to one read's requests leave in one
write. A handler that waits keeps the task that read it; its successor takes every
further body of that read at once (a task for each, so that none waits for the
others' first steps) and then serves inline again.

**Deferred answers.** A handler whose answer will come from elsewhere (a node
relaying a call to the node that owns it: the owner's answer arrives on another
connection) returns :meth:`IncomingRequest.defer`'s :class:`Deferred` instead of
waiting for it: no task waits. The request stays in service (its handler slot,
its bytes, :attr:`Server.in_service`) until :meth:`Deferred.answer` or
:meth:`Deferred.fail` sends its one answer, or until it is given up — the peer's
cancel (answered CANCELLED), its deadline (a timer task of the connection answers
DEADLINE_EXCEEDED), the connection's end (no answer) — and then
:attr:`Deferred.on_give_up` is told, so that the work behind it stops.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..deadlines import DeadlineQueue
from ..errors import ErrorCode, SpearError
from .calling import _NO_SCOPE, Caller
from .core import (
    CancelReceived,
    ConnectionClosed,
    CreditReceived,
    ErrorReceived,
    Event,
    ItemReceived,
    RequestReceived,
    ResponseReceived,
)
from .framing import ProtocolError
from .inline import run_inline
from .transports import StreamTransport

__all__ = ["Deferred", "Handler", "IncomingRequest", "Server"]

log = logging.getLogger(__name__)

Handler = Callable[["IncomingRequest"], Awaitable[Any]]
"""Serves one incoming request: returns the result or raises :class:`SpearError`."""


class IncomingRequest:
    """A request from the peer, as seen by the handler serving it."""

    def __init__(
        self, connection: Server, event: RequestReceived, size: int = 0, cancel_scope: trio.CancelScope | None = None
    ) -> None:
        self.connection = connection
        self.size = size
        """Bytes of the request's body (counted against the connection's budget)."""
        self.id = event.id
        self.method = event.method
        self.params = event.params
        self.timeout_ms = event.timeout_ms
        self.is_stream = event.window is not None
        self._credit_event: trio.Event | None = None  # made when a producer waits for credit
        self.cancel_scope = cancel_scope if cancel_scope is not None else trio.CancelScope()
        """Cancelled to stop the handler (the peer's cancel, the deadline, the end of
        the connection). A request served inline shares its reader task's scope:
        only the one request the task ends up waiting for can be cancelled through it."""
        self.cancel_reason: str | None = None
        """Set when the peer cancelled this request (with the reason it gave)."""
        self._deferred: Deferred | None = None

    def defer(self) -> Deferred:
        """For a unary request whose answer comes later from a callback: the handler
        returns this :class:`Deferred` (see the module docstring), and no task waits."""
        if self.is_stream:
            raise SpearError(ErrorCode.FAILED_PRECONDITION, f"{self.method}: a stream's answer cannot be deferred")
        self._deferred = Deferred(self)
        return self._deferred

    @property
    def items_sent(self) -> int:
        """How many stream items the handler has sent so far."""
        return self.connection.core.items_sent(self.id)

    async def send_item(self, data: Any) -> None:
        """Send one stream item, first waiting for the consumer's credit and for room
        in the send queue."""
        if not self.is_stream:
            raise SpearError(ErrorCode.FAILED_PRECONDITION, f"{self.method}: request is not a stream")
        connection = self.connection
        core = connection.core
        while core.credit(self.id) <= 0:
            connection._check_open()
            self._credit_event = trio.Event()
            await self._credit_event.wait()
        await connection._outbox.wait_room()
        connection._check_open()
        connection._put(core.send_item(self.id, data))

    def _credit_arrived(self) -> None:
        if self._credit_event is not None:
            self._credit_event.set()


class Deferred:
    """The answer to a request, to come later (see the module docstring): call
    :meth:`answer` or :meth:`fail` once, from any task, without waiting."""

    __slots__ = ("_armed", "_done", "_ended", "_error", "_incoming", "_result", "on_give_up")

    def __init__(self, incoming: IncomingRequest) -> None:
        self._incoming: IncomingRequest | None = incoming
        self._armed = False  # the handler returned it: the connection holds the request
        self._ended = False  # answered or given up
        self._result: Any = None
        self._error: SpearError | None = None
        self._done: list[Callable[[], None]] = []
        self.on_give_up: Callable[[str], None] | None = None
        """Told (with a reason) when the request is given up before it is answered:
        the peer cancelled it, its deadline passed, or the connection ended."""

    @property
    def ended(self) -> bool:
        """True once answered or given up."""
        return self._ended

    def add_done_callback(self, callback: Callable[[], None]) -> None:
        """Call *callback* once the request is out of service (answered or given up)."""
        if self._incoming is None:
            callback()
        else:
            self._done.append(callback)

    def answer(self, result: Any) -> None:
        """Send *result* as the request's answer (nothing if it has ended already)."""
        if not self._ended:
            self._result = result
            self._end()

    def fail(self, error: SpearError) -> None:
        """Send *error* as the request's answer (nothing if it has ended already)."""
        if not self._ended:
            self._error = error
            self._end()

    def _end(self) -> None:
        self._ended = True
        self.on_give_up = None  # a closure over this answer is no cycle left for the GC
        incoming = self._incoming
        if self._armed and incoming is not None:  # else the handler's return sends it
            incoming.connection._end_deferred(incoming, self._body())

    def _body(self) -> bytes | None:
        """The answer's body (the request's one answer)."""
        incoming = self._incoming
        assert incoming is not None
        core = incoming.connection.core
        if self._error is not None:
            return core.fail(incoming.id, self._error)
        try:
            return core.respond(incoming.id, self._result)
        except SpearError as exc:  # the result cannot be sent: say why instead
            return core.fail(incoming.id, exc)

    def _give_up(self, reason: str, error: SpearError | None) -> None:
        """End without the awaited answer: *error* is sent instead (None: nothing is)."""
        incoming = self._incoming
        if self._ended or incoming is None:
            return
        self._ended = True
        on_give_up, self.on_give_up = self.on_give_up, None
        if on_give_up is not None:
            try:
                on_give_up(reason)
            except SpearError:
                pass  # the other side is gone already: nothing to stop
        connection = incoming.connection
        body = None if error is None or connection.closed else connection.core.fail(incoming.id, error)
        connection._end_deferred(incoming, body)

    def _finished(self) -> None:
        self._incoming = None  # let the request's params go (a deadline's entry may outlive it)
        callbacks, self._done = self._done, []
        for callback in callbacks:
            callback()


class Server(Caller):
    """The serving role, and the reader task (see the module docstring)."""

    def _init_serving(self, handler: Handler | None) -> None:
        self._handler = handler
        self._handlers: dict[int, IncomingRequest] = {}
        self._handlers_starting = 0  # started by the reader, not yet running
        # A semaphore, not a CapacityLimiter: it need not track which task holds a
        # slot, and its acquire_nowait is several times cheaper on this hot path.
        self._handler_slots = trio.Semaphore(self.config.max_inflight_handlers)
        self._serving_room = trio.Event()
        self._max_handlers = self.config.max_inflight_handlers + self.config.max_queued_handlers
        self._bytes_in_service = 0
        buffered = self.transport if isinstance(self.transport, StreamTransport) else None
        self._buffered = buffered
        self._deferred_deadlines = DeadlineQueue[Deferred](self._deferred_expired, _deferred_live)

    @property
    def in_service(self) -> int:
        """The peer's requests being served or waiting for a handler slot."""
        return len(self._handlers)

    @property
    def bytes_in_service(self) -> int:
        """Bytes of the requests counted by :attr:`in_service`."""
        return self._bytes_in_service

    def _dispatch(self, event: Event) -> None:
        kind = type(event)
        if kind is ResponseReceived or kind is ErrorReceived or kind is ItemReceived:
            self._on_answer(event)  # type: ignore[arg-type]
        elif kind is CancelReceived:
            assert isinstance(event, CancelReceived)
            incoming = self._handlers.get(event.id)
            if incoming is not None:
                incoming.cancel_reason = event.reason
                deferred = incoming._deferred
                if deferred is not None and deferred._armed:
                    deferred._give_up(f"peer cancelled: {event.reason}", SpearError(ErrorCode.CANCELLED, event.reason))
                else:
                    incoming.cancel_scope.cancel()
        elif kind is CreditReceived:
            assert isinstance(event, CreditReceived)
            incoming = self._handlers.get(event.id)
            if incoming is not None:
                incoming._credit_arrived()

    def _cancel_handlers(self) -> None:
        deferred: list[Deferred] = []
        for incoming in self._handlers.values():
            incoming.cancel_scope.cancel()
            if incoming._deferred is not None and incoming._deferred._armed:
                deferred.append(incoming._deferred)
        for answer in deferred:  # each leaves self._handlers
            answer._give_up("the connection ended", None)

    # -- deferred answers ------------------------------------------------------------
    def _hold_deferred(self, incoming: IncomingRequest, deferred: Deferred) -> None:
        """The handler returned *deferred*, not ended yet: keep *incoming* in service
        until it ends."""
        deferred._armed = True
        if self.closed:  # it ended while the handler ran without waiting
            deferred._give_up("the connection ended", None)
            return
        if incoming.cancel_reason is not None:
            reason = incoming.cancel_reason
            deferred._give_up(f"peer cancelled: {reason}", SpearError(ErrorCode.CANCELLED, reason))
            return
        deadline = incoming.cancel_scope.deadline
        if deadline != math.inf:
            deferred.add_done_callback(self._deferred_deadlines.ended)
            assert self._nursery is not None
            self._deferred_deadlines.add(deadline, deferred, self._nursery)

    def _end_deferred(self, incoming: IncomingRequest, body: bytes | None) -> None:
        """A held request has ended: out of service, and *body* sent."""
        del self._handlers[incoming.id]
        self._bytes_in_service -= incoming.size
        self._serving_room.set()
        self._handler_slots.release()
        assert incoming._deferred is not None
        incoming._deferred._finished()
        self._send_answer(body, defer=False)

    def _deferred_expired(self, deferred: Deferred) -> None:
        incoming = deferred._incoming
        if incoming is not None:
            deferred._give_up("deadline exceeded", _deadline_exceeded(incoming))

    # -- the reader task -----------------------------------------------------------
    def _start_reader(self) -> None:
        if not self.closed:
            assert self._nursery is not None
            self._nursery.start_soon(self._reader, True)

    def _has_room(self) -> bool:
        return len(self._handlers) < self._max_handlers

    async def _wait_for_room(self) -> None:
        """Stop reading while too many requests are served or waiting for a slot."""
        while not self._has_room():
            self._serving_room = trio.Event()
            await self._serving_room.wait()

    async def _reader(self, take_all: bool = False) -> None:
        """Read and dispatch until a request arrives; serve it; and read on if it was
        answered without waiting (else the successor started then reads). *take_all*:
        first start a task for every further request already read (a successor's
        first read: the rest of the read whose request waited)."""
        # One cancel scope for every request this task serves inline, not one per
        # request (a scope costs more than a cheap request's handler): a request
        # answered without waiting cannot be cancelled anyway, and the first one that
        # waits keeps this task to itself (its successor reads on), so the scope is
        # then that request's alone.
        serving: IncomingRequest | None = None
        with trio.CancelScope() as scope:
            while not self.closed:
                first = await self._read_request(take_all, scope)
                take_all = False
                if first is None:
                    return
                serving = first
                successor = _Once(self._start_reader)
                try:
                    await self._serve(first, successor)
                except BaseException:
                    successor()
                    raise
                serving = None
                if successor.fired:
                    return
                if first.timeout_ms is not None:
                    scope.deadline = math.inf  # its deadline must not cut the next read
        if serving is not None and scope.cancelled_caught:  # the request it waited for
            self._send_answer(self._cancelled_answer(serving), defer=False)

    async def _read_request(self, take_all: bool, scope: trio.CancelScope) -> IncomingRequest | None:
        """Read and dispatch until a request arrives (a body already read comes
        first, without waiting); with *take_all*, also take every body the same read
        brought in (a task for each further request). None when the connection
        ended."""
        core = self.core
        outbox = self._outbox
        first: IncomingRequest | None = None
        try:
            while True:
                if first is not None:
                    if not take_all:
                        break  # the rest stays read: served inline after this one
                    body = self._buffered.receive_buffered() if self._buffered is not None else None
                    if body is None:
                        break
                else:
                    if self._handler is not None:
                        # the peer sent more than we hold for it, or does not read
                        # what we answered: stop reading it until that drains
                        while self._bytes_in_service > self.config.max_bytes_in_service:
                            self._serving_room = trio.Event()
                            await self._serving_room.wait()
                        if outbox.queued_bytes > self.config.send_high_water:
                            await outbox.wait_room()
                    body = await self._receive_as_reader()
                if body is None:
                    core.receive_body(None, trio.current_time())
                    event = core.next_event()
                    if event is None:
                        # the core had closed already (e.g. our goodbye): nothing more
                        # will come, and a closed websocket answers None without waiting
                        return None
                else:
                    event = core.event_for(body, trio.current_time())
                if core.has_data_to_send:
                    self._flush_core()
                if event is None:
                    continue
                kind = type(event)
                if kind is RequestReceived:
                    assert isinstance(event, RequestReceived)
                    if len(self._handlers) >= self._max_handlers:
                        if first is not None:
                            self._spawn_server(first)
                            first = None
                        await self._wait_for_room()
                    incoming = IncomingRequest(self, event, len(body) if body is not None else 0, scope)
                    self._bytes_in_service += incoming.size
                    self._handlers[event.id] = incoming
                    if first is None:
                        first = incoming
                    else:
                        self._spawn_server(incoming)
                elif kind is ConnectionClosed:
                    assert isinstance(event, ConnectionClosed)
                    await self._closing(event)
                    return None
                else:
                    self._dispatch(event)
        except ProtocolError as exc:
            await self._protocol_error(exc)
            return None
        except SpearError as exc:
            self._die(exc)
            return None
        return first

    def _spawn_server(self, incoming: IncomingRequest) -> None:
        assert self._nursery is not None
        incoming.cancel_scope = trio.CancelScope()  # its own task: its own scope
        self._handlers_starting += 1
        self._nursery.start_soon(functools.partial(self._serve, incoming, spawned=True))

    async def _serve(
        self, incoming: IncomingRequest, before_waiting: Callable[[], None] | None = None, spawned: bool = False
    ) -> None:
        """Run the handler for *incoming* and send its one answer.

        *before_waiting* (from the reader that read the request) is called before
        this task first waits for anything: then someone else must read. Served so,
        the request's cancel scope is the reader's, entered by the reader, which
        answers a cancellation; a spawned server enters the request's own scope.
        """
        handler = self._handler
        assert handler is not None
        if spawned:
            self._handlers_starting -= 1
        core = self.core
        body: bytes | None
        scope = incoming.cancel_scope
        if incoming.timeout_ms is not None:
            scope.deadline = trio.current_time() + incoming.timeout_ms / 1000
        try:
            with scope if before_waiting is None else _NO_SCOPE:
                # acquire_nowait first: `async with` always adds a schedule point,
                # one more trip through the run loop for every request served
                try:
                    self._handler_slots.acquire_nowait()
                except trio.WouldBlock:
                    if before_waiting is not None:
                        before_waiting()
                    await self._handler_slots.acquire()
                result = None
                try:
                    if before_waiting is None:
                        result = await handler(incoming)
                    else:
                        result = await run_inline(handler(incoming), before_waiting)
                finally:
                    if result is None or result is not incoming._deferred:
                        self._handler_slots.release()  # else the deferred answer holds it
            deferred = incoming._deferred
            if result is deferred and deferred is not None:
                if not deferred._ended:
                    self._hold_deferred(incoming, deferred)
                    return  # held: the deferred answer ends it
                # answered before the handler returned: sent as a returned result is
                self._handler_slots.release()
                incoming._deferred = None
                body = deferred._body()
                deferred._finished()
            elif scope.cancelled_caught:  # (a spawned server's own scope)
                body = self._cancelled_answer(incoming)
            else:
                try:
                    body = core.respond(incoming.id, result)
                except SpearError as exc:  # the result cannot be sent: say why instead
                    body = core.fail(incoming.id, exc)
        except SpearError as exc:
            body = core.fail(incoming.id, exc)
        except Exception as exc:
            log.exception("handler for %s failed", incoming.method)
            body = core.fail(incoming.id, SpearError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"))
        finally:
            if incoming._deferred is None or not incoming._deferred._armed:
                del self._handlers[incoming.id]
                self._bytes_in_service -= incoming.size
                self._serving_room.set()
        if body is None or self.closed:
            return
        # more handlers of the same read run in this pass (spawned), or more of its
        # requests are next (inline): the last one writes every answer at once (or
        # the writer, a pass later, if one waits)
        if spawned:
            defer = self._handlers_starting > 0
        else:  # held back only while small: never what makes the reader stop reading
            buffered = self._buffered
            defer = (
                buffered is not None
                and buffered.has_buffered
                and self._outbox.queued_bytes + len(body) <= _INLINE_DEFER_BYTES
            )
        self._send_answer(body, defer)

    def _cancelled_answer(self, incoming: IncomingRequest) -> bytes | None:
        """The answer of a request whose handler was cancelled: the peer's cancel, or
        its deadline (None once the connection is closed: nobody to answer)."""
        if self.closed:
            return None
        if incoming.cancel_reason is not None:
            error = SpearError(ErrorCode.CANCELLED, incoming.cancel_reason)
        else:
            error = _deadline_exceeded(incoming)
        return self.core.fail(incoming.id, error)

    def _send_answer(self, body: bytes | None, defer: bool) -> None:
        """Put an answer in the outbox (nothing once the connection is closed)."""
        if body is None or self.closed:
            return
        try:
            self._outbox.put(body, defer=defer)
        except SpearError:
            pass  # a lost link: _die has run


def _deferred_live(deferred: Deferred) -> bool:
    return not deferred.ended


def _deadline_exceeded(incoming: IncomingRequest) -> SpearError:
    """The answer of a request whose own deadline (``timeout_ms``) passed."""
    return SpearError(ErrorCode.DEADLINE_EXCEEDED, f"{incoming.method}: deadline of {incoming.timeout_ms} ms exceeded")


_INLINE_DEFER_BYTES = 64 * 1024
"""Answers of inline-served requests held back for one write with the next ones (far
under the send high water, so holding them never stops the reader)."""


class _Once:
    """Call *fn* the first time this is called; later calls do nothing."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn: Callable[[], None] | None = fn

    @property
    def fired(self) -> bool:
        """True once called."""
        return self._fn is None

    def __call__(self) -> None:
        fn, self._fn = self._fn, None
        if fn is not None:
            fn()

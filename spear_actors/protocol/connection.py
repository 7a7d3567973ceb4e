"""A protocol connection over any :class:`~.transports.Transport` (trio).

One :class:`Connection` per link, on both sides. It numbers and correlates
requests, serves the peer's requests through a handler, carries streams with
credit-based flow control, propagates cancellation both ways and runs the
heartbeat. Its background tasks live in a nursery of its own, hidden behind
:func:`~.handshake.open_connection` / :func:`~.handshake.accept_connection` (which
also do the hello/welcome handshake), so the caller's code is never cancelled by a
connection failure: failures surface as :class:`SpearError` from the calls in
flight.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import trio

from ..errors import ErrorCode, SpearError
from .calls import Handler, IncomingRequest, ResponseStream, _PendingCall
from .framing import DEFAULT_MAX_FRAME_SIZE, ProtocolError
from .inline import run_inline
from .messages import (
    Cancel,
    Credit,
    Error,
    Goodbye,
    Hello,
    Message,
    Ping,
    Pong,
    Request,
    Response,
    StreamEnd,
    StreamItem,
    Welcome,
    decode_message,
    encode_message,
)
from .outbox import Outbox
from .transports import Transport

__all__ = ["Connection", "ConnectionConfig"]

log = logging.getLogger(__name__)

_CLOSE_GRACE: Final = 0.5


@dataclasses.dataclass(slots=True)
class ConnectionConfig:
    """Tunables of a connection. The accepting side's heartbeat values win: its
    welcome tells the opening side which to use."""

    heartbeat_interval: float = 5.0
    """Seconds between pings sent by each side."""
    heartbeat_timeout: float = 15.0
    """Seconds of silence after which the peer is declared dead."""
    handshake_timeout: float = 10.0
    """Seconds the accepting side waits for a hello (and the opener for a welcome)."""
    max_inflight_handlers: int = 64
    """Incoming requests served at once; more wait for a slot (they do not fail)."""
    max_queued_handlers: int = 4096
    """Incoming requests waiting for a slot before the reader stops reading (backpressure)."""
    stream_window: int = 16
    """Default credit granted for an outgoing stream request."""
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    """Largest body sent or accepted."""
    send_high_water: int = 4 * 1024 * 1024
    """Bytes queued for sending above which senders wait for the writer."""


class Connection:
    """An open, authenticated protocol connection. Use :func:`open_connection` or
    :func:`accept_connection` to get one; both close it on exit."""

    def __init__(
        self,
        transport: Transport,
        config: ConnectionConfig,
        *,
        handler: Handler | None,
        peer: Hello | Welcome,
        identity: Any = None,
    ) -> None:
        self.transport = transport
        self.config = config
        self.peer = peer
        """The peer's hello (on the accepting side) or welcome (on the opening side)."""
        self.identity = identity
        """What the authenticator returned for the peer (accepting side)."""
        self._handler = handler
        self._ids = itertools.count(1)
        self._pending: dict[int, _PendingCall | ResponseStream] = {}
        self._serving: dict[int, IncomingRequest] = {}
        self._handlers_starting = 0  # started by the reader, not yet running
        # A semaphore, not a CapacityLimiter: it need not track which task holds a
        # slot, and its acquire_nowait is several times cheaper on this hot path.
        self._handler_slots = trio.Semaphore(config.max_inflight_handlers)
        self._serving_room = trio.Event()
        self._outbox = Outbox(
            transport,
            high_water=config.send_high_water,
            check_open=self._check_open,
            on_lost=self._die,
        )
        self._closed_event = trio.Event()
        self._close_reason: SpearError | None = None
        self._last_received = trio.current_time()
        self._ping_seq = 0
        self._nursery: trio.Nursery | None = None
        # Callers that read their own answer (see _try_lead): on a connection that
        # serves no requests, over a transport that can wait for data without taking it.
        self._can_lead = handler is None and transport.can_wait_readable
        self._leader: _PendingCall | None = None
        self._lead_released = trio.lowlevel.ParkingLot()  # the reader, while a caller leads
        self._reader_idle: trio.CancelScope | None = None
        self._reader_busy = False
        self.on_unconfirmed_cancel: Callable[[str, int], None] | None = None
        """Called with (method, request id) when a peer does not confirm a cancel
        within the caller's ``cancel_grace``."""

    # -- public API ----------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once the connection is closed or dead; calls then fail UNAVAILABLE."""
        return self._close_reason is not None

    @property
    def close_reason(self) -> SpearError | None:
        """Why the connection closed (None while open)."""
        return self._close_reason

    @property
    def in_flight(self) -> int:
        """Outgoing requests and streams awaiting their terminal answer."""
        return len(self._pending)

    async def wait_closed(self) -> None:
        """Return once the connection has closed, for whatever reason."""
        await self._closed_event.wait()

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
        seconds (the deadline also travels to the peer); UNAVAILABLE at once if
        the connection dies. Cancelling the caller sends a cancel to the peer;
        with *cancel_grace*, the caller then waits up to that long (shielded) for
        the peer to confirm by answering, and :attr:`on_unconfirmed_cancel` is
        called if it does not.
        """
        self._check_open()
        request_id = next(self._ids)
        call = _PendingCall()
        self._pending[request_id] = call
        leading = self._try_lead(call)
        try:
            try:
                await self._send(Request(request_id, method, params, _ms(timeout)))
                if timeout is None:
                    await (self._read_until(call) if leading else call.event.wait())
                else:
                    with trio.move_on_after(timeout):
                        await (self._read_until(call) if leading else call.event.wait())
            finally:
                if leading:
                    self._end_lead()
            if not call.event.is_set():
                if timeout is None:  # the read ended without an answer: the link is gone
                    await call.event.wait()
                else:
                    self._give_up(request_id, "deadline exceeded")
                    raise SpearError(ErrorCode.DEADLINE_EXCEEDED, f"{method}: no answer within {timeout:g}s")
        except trio.Cancelled:
            if not call.event.is_set():
                self._send_nowait(Cancel(request_id, "caller cancelled"))
                if cancel_grace is not None:
                    with trio.CancelScope(shield=True) as grace:
                        grace.deadline = trio.current_time() + cancel_grace
                        await call.event.wait()
                    if not call.event.is_set() and not self.closed and self.on_unconfirmed_cancel is not None:
                        self.on_unconfirmed_cancel(method, request_id)
            raise
        finally:
            self._pending.pop(request_id, None)
        if call.error is not None:
            raise call.error
        return call.result

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
        request_id = next(self._ids)
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        items = ResponseStream(self, request_id, window, deadline)
        self._pending[request_id] = items
        try:
            await self._send(Request(request_id, method, params, _ms(timeout), window))
            yield items
        finally:
            if not items.finished:
                self._send_nowait(Cancel(request_id, "consumer left the stream"))
                if cancel_grace is not None and not self.closed:
                    with trio.CancelScope(shield=True) as grace:
                        grace.deadline = trio.current_time() + cancel_grace
                        await items.wait_finished()
                    if not items.finished and not self.closed and self.on_unconfirmed_cancel is not None:
                        self.on_unconfirmed_cancel(method, request_id)
            self._pending.pop(request_id, None)

    async def aclose(self, reason: str = "closing") -> None:
        """Say goodbye and close. Calls still in flight fail with UNAVAILABLE."""
        if self.closed:
            return
        with trio.move_on_after(_CLOSE_GRACE) as scope:
            scope.shield = True
            self._send_nowait(Goodbye(reason))
            await self._drain()
        self._die(SpearError(ErrorCode.UNAVAILABLE, f"connection closed locally: {reason}"))

    # -- sending -------------------------------------------------------------
    def _encode(self, message: Message) -> bytes:
        body = encode_message(message)
        if len(body) > self.config.max_frame_size:
            raise SpearError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"{message.TYPE} of {len(body)} bytes exceeds the frame limit of {self.config.max_frame_size}",
            )
        return body

    def _send_nowait(self, message: Message) -> None:
        """Queue a message without waiting for room (control messages, final answers)."""
        if self.closed:
            return
        self._outbox.put_nowait(self._encode(message))

    async def _send(self, message: Message) -> None:
        """Send a message, waiting while the send queue is above its high-water mark."""
        await self._outbox.send(self._encode(message))

    async def _drain(self) -> None:
        """Wait until everything queued so far has been written (or the link died)."""
        await self._outbox.flush()

    def _check_open(self) -> None:
        if self._close_reason is not None:
            raise SpearError(self._close_reason.code, self._close_reason.message)

    def _give_up(self, request_id: int, reason: str) -> None:
        """Forget an outgoing request locally and tell the peer to cancel it."""
        self._pending.pop(request_id, None)
        self._send_nowait(Cancel(request_id, reason))

    # -- callers that read their own answer ---------------------------------
    # A caller waiting for its answer while the reader task reads costs one more
    # pass of trio's run loop per call: the reader wakes, then wakes the caller.
    # So a caller may *lead*: read the link itself until its answer has come,
    # dispatching whatever else arrives. One leader at a time; the reader task
    # reads only while nobody leads, and waits for data without taking it
    # (wait_readable), so a new leader takes over at once by cancelling that wait.
    # Not over websocket: there trio-websocket's own task reads the socket, and
    # letting callers take messages from it measured no faster.

    def _try_lead(self, call: _PendingCall) -> bool:
        if not self._can_lead or self._leader is not None or self._reader_busy or self.closed:
            return False
        self._leader = call
        if self._reader_idle is not None:
            self._reader_idle.cancel()
        return True

    def _end_lead(self) -> None:
        self._leader = None
        self._lead_released.unpark_all()

    async def _read_until(self, call: _PendingCall) -> None:
        """Read and dispatch until *call* is answered (or the connection dies)."""
        transport = self.transport
        try:
            while not call.event.is_set():
                body = await transport.receive_body()
                if body is None:
                    self._die(SpearError(ErrorCode.UNAVAILABLE, "peer closed the connection"))
                    return
                self._last_received = trio.current_time()
                self._dispatch_as_leader(decode_message(body))
            # what the same read brought in for other callers is theirs now
            while not self.closed and (body := transport.receive_buffered()) is not None:
                self._dispatch_as_leader(decode_message(body))
        except ProtocolError as exc:
            await self._protocol_error(exc)
        except SpearError as exc:
            self._die(exc)

    def _dispatch_as_leader(self, message: Message) -> None:
        if isinstance(message, Request):
            self._admit(message)  # no handler on a connection that leads: refused at once
        else:
            self._dispatch(message)

    async def _receive_as_reader(self) -> bytes | None:
        """The reader task's next body (None: the peer closed), never while a caller leads."""
        transport = self.transport
        if not self._can_lead:
            return await transport.receive_body()
        while True:
            body = transport.receive_buffered()
            if body is not None:
                return body
            if self._leader is not None:
                await self._lead_released.park()
                continue
            with trio.CancelScope() as self._reader_idle:
                await transport.wait_readable()
            self._reader_idle = None
            if self._leader is None:  # else a caller took over while we waited
                self._reader_busy = True
                try:
                    return await transport.receive_body()
                finally:
                    self._reader_busy = False

    # -- background tasks ----------------------------------------------------
    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._outbox.run_writer)
                nursery.start_soon(self._reader)
                nursery.start_soon(self._heartbeat)
                task_status.started()
        finally:
            self._die(SpearError(ErrorCode.UNAVAILABLE, "connection closed"))
            with trio.CancelScope(shield=True):
                await self.transport.aclose()

    def _die(self, reason: SpearError) -> None:
        """Close now: fail everything in flight with *reason* and stop the tasks."""
        if self._close_reason is not None:
            return
        self._close_reason = reason
        for pending in self._pending.values():
            pending.fail(SpearError(reason.code, reason.message))
        self._pending.clear()
        for incoming in self._serving.values():
            incoming.cancel_scope.cancel()
        if self._leader is not None:
            # wake the leader's read (a cancel scope around each read would cost
            # every call more than this costs the one that dies)
            self.transport.interrupt_receive()
        self._outbox.close()
        self._closed_event.set()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _reader(self) -> None:
        """Read and dispatch messages until a request arrives; then serve it.

        The task that reads a request serves it. First it takes every body the
        same read brought in (starting a task for each further request); then it
        runs the handler, and starts its successor as the connection's reader just
        before the handler or the write of its answer would wait (or once it is
        done). A request's handler thus starts in the run-loop pass that received
        it rather than one pass later in a fresh task, and still every request has
        a task of its own.
        """
        transport = self.transport
        first: IncomingRequest | None = None
        try:
            while True:
                if first is None:
                    body = await self._receive_as_reader()
                    if body is None:
                        self._die(SpearError(ErrorCode.UNAVAILABLE, "peer closed the connection"))
                        return
                    self._last_received = trio.current_time()
                else:
                    body = transport.receive_buffered()
                    if body is None:
                        break
                message = decode_message(body)
                if not isinstance(message, Request):
                    self._dispatch(message)
                    if self.closed:
                        return
                    continue
                if not self._has_room():
                    if first is not None:
                        self._spawn_server(first)
                        first = None
                    await self._wait_for_room()
                incoming = self._admit(message)
                if incoming is None:
                    continue
                if first is None:
                    first = incoming
                else:
                    self._spawn_server(incoming)
        except ProtocolError as exc:
            await self._protocol_error(exc)
            return
        except SpearError as exc:
            self._die(exc)
            return
        # The successor starts when this task is about to wait: a handler that
        # answers without waiting has its answer written before the spawn.
        successor = _Once(self._start_reader)
        try:
            await self._serve(first, successor)
        finally:
            successor()

    def _start_reader(self) -> None:
        if not self.closed:
            assert self._nursery is not None
            self._nursery.start_soon(self._reader)

    async def _protocol_error(self, exc: ProtocolError) -> None:
        """Tell the peer what was wrong with what it sent, then close."""
        log.warning("%s: protocol error from peer: %s", self.transport.description, exc.message)
        with trio.move_on_after(_CLOSE_GRACE) as scope:
            scope.shield = True
            self._send_nowait(Error.from_exception(None, exc))
            await self._drain()
        self._die(SpearError(ErrorCode.UNAVAILABLE, f"protocol error: {exc.message}"))

    async def _heartbeat(self) -> None:
        interval = self.config.heartbeat_interval
        timeout = self.config.heartbeat_timeout
        next_ping = trio.current_time() + interval
        while True:
            dead_at = self._last_received + timeout
            await trio.sleep_until(min(next_ping, dead_at))
            now = trio.current_time()
            if now >= self._last_received + timeout:
                self._die(
                    SpearError(
                        ErrorCode.UNAVAILABLE,
                        f"peer silent for {timeout:g}s (heartbeat timeout)",
                    )
                )
                return
            if now >= next_ping:
                self._ping_seq += 1
                self._send_nowait(Ping(self._ping_seq))
                next_ping = now + interval

    def _dispatch(self, message: Message) -> None:
        """Act on a message that is not a request (requests go to :meth:`_admit`)."""
        if isinstance(message, (Response, StreamEnd)):
            pending = self._pending.get(message.id)
            if isinstance(pending, _PendingCall):
                if isinstance(message, StreamEnd):
                    raise ProtocolError(f"stream_end for unary request {message.id}")
                pending.resolve(message.result)
            elif pending is not None:
                pending.end(message.result)
        elif isinstance(message, StreamItem):
            pending = self._pending.get(message.id)
            if isinstance(pending, ResponseStream):
                pending._push(message)
            elif pending is not None:
                raise ProtocolError(f"stream_item for unary request {message.id}")
        elif isinstance(message, Error):
            if message.id is None:
                self._die(SpearError(ErrorCode(message.code), f"peer reported: {message.message}"))
                return
            pending = self._pending.get(message.id)
            if pending is not None:
                pending.fail(message.to_exception())
        elif isinstance(message, Cancel):
            incoming = self._serving.get(message.id)
            if incoming is not None:
                incoming.cancel_reason = message.reason or "cancelled by peer"
                incoming.cancel_scope.cancel()
        elif isinstance(message, Credit):
            incoming = self._serving.get(message.id)
            if incoming is not None:
                incoming._add_credit(message.n)
        elif isinstance(message, Ping):
            self._send_nowait(Pong(message.seq, message.payload))
        elif isinstance(message, Pong):
            pass
        elif isinstance(message, Goodbye):
            self._die(SpearError(ErrorCode.UNAVAILABLE, f"peer said goodbye: {message.reason}"))
        else:  # hello / welcome after the handshake
            raise ProtocolError(f"unexpected {message.TYPE} after the handshake")

    def _has_room(self) -> bool:
        return len(self._serving) < self.config.max_inflight_handlers + self.config.max_queued_handlers

    async def _wait_for_room(self) -> None:
        """Stop reading while too many requests are served or waiting for a slot."""
        while not self._has_room():
            self._serving_room = trio.Event()
            await self._serving_room.wait()

    def _admit(self, message: Request) -> IncomingRequest | None:
        """Register a request to be served; None when it was answered at once."""
        if self._handler is None:
            self._send_nowait(Error(message.id, ErrorCode.NOT_FOUND.value, f"no such method: {message.method}"))
            return None
        if message.id in self._serving:
            raise ProtocolError(f"request id {message.id} is already in flight")
        incoming = IncomingRequest(self, message)
        self._serving[message.id] = incoming
        return incoming

    def _spawn_server(self, incoming: IncomingRequest) -> None:
        assert self._nursery is not None
        self._handlers_starting += 1
        self._nursery.start_soon(functools.partial(self._serve, incoming, spawned=True))

    async def _serve(
        self, incoming: IncomingRequest, before_waiting: Callable[[], None] | None = None, spawned: bool = False
    ) -> None:
        """Run the handler for *incoming* and send its one answer.

        *before_waiting* (from the reader that read the request) is called before
        this task first waits for anything: then someone else must read.
        """
        assert self._handler is not None
        if spawned:
            self._handlers_starting -= 1
        reply: Message
        scope = incoming.cancel_scope
        if incoming.timeout_ms is not None:
            scope.deadline = trio.current_time() + incoming.timeout_ms / 1000
        try:
            with scope:
                # acquire_nowait first: `async with` always adds a schedule point,
                # one more trip through the run loop for every request served
                try:
                    self._handler_slots.acquire_nowait()
                except trio.WouldBlock:
                    if before_waiting is not None:
                        before_waiting()
                    await self._handler_slots.acquire()
                try:
                    if before_waiting is None:
                        result = await self._handler(incoming)
                    else:
                        result = await run_inline(self._handler(incoming), before_waiting)
                finally:
                    self._handler_slots.release()
                if incoming.is_stream:
                    reply = StreamEnd(incoming.id, incoming.items_sent, result)
                else:
                    reply = Response(incoming.id, result)
            if scope.cancelled_caught:
                if incoming.cancel_reason is not None:
                    reply = Error(incoming.id, ErrorCode.CANCELLED.value, incoming.cancel_reason)
                elif self.closed:
                    return
                else:
                    reply = Error(
                        incoming.id,
                        ErrorCode.DEADLINE_EXCEEDED.value,
                        f"{incoming.method}: deadline of {incoming.timeout_ms} ms exceeded",
                    )
        except SpearError as exc:
            reply = Error.from_exception(incoming.id, exc)
        except Exception as exc:
            log.exception("handler for %s failed", incoming.method)
            reply = Error(incoming.id, ErrorCode.INTERNAL.value, f"{type(exc).__name__}: {exc}")
        finally:
            del self._serving[incoming.id]
            self._serving_room.set()
        try:
            if spawned and self._handlers_starting:
                # more handlers of the same read run in this pass: the last one
                # writes every answer at once (the writer, a pass later, if it waits)
                self._outbox.put_nowait(self._encode(reply))
            else:
                await self._outbox.send(self._encode(reply), before_waiting)
        except SpearError as exc:  # the result cannot be sent: say why instead
            if not self.closed:
                self._send_nowait(Error.from_exception(incoming.id, exc))


class _Once:
    """Call *fn* the first time this is called; later calls do nothing."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn: Callable[[], None] | None = fn

    def __call__(self) -> None:
        fn, self._fn = self._fn, None
        if fn is not None:
            fn()


def _ms(timeout: float | None) -> int | None:
    return None if timeout is None else max(0, math.ceil(timeout * 1000))

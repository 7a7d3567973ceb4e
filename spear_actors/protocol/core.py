"""The protocol's state machine, without I/O (sans-IO, in the manner of h11).

A :class:`ProtocolCore` is one side of one open connection (after the handshake).
Bytes or bodies go in (:meth:`~ProtocolCore.receive_data`,
:meth:`~ProtocolCore.receive_body`), events come out (:meth:`~ProtocolCore.next_event`);
what the application wants to send goes in as an intent (:meth:`~ProtocolCore.request`,
:meth:`~ProtocolCore.respond`, :meth:`~ProtocolCore.send_item`, ...) and comes out as
a message body to write. The core never reads a clock (the time is an argument),
never blocks, and imports neither trio nor sockets, so the node's trio driver and the
agent's threads run the very same rules, and the tests drive it with bytes alone.

It owns every rule of docs/protocol.md §5-§9 that concerns a connection once open:

* request ids: its own count from 1, strictly increasing; the peer's must be too;
* the pending table (its requests awaiting their terminal answer) and the serving
  table (the peer's requests it has not answered yet);
* exactly one terminal answer per request, in each direction: a second answer to a
  request it serves is dropped, an answer to an id it is not waiting for is ignored;
* credit and sequence accounting of streams, both as producer and as consumer;
* cancels (a cancel is reported once; the answer it asks for is one terminal answer);
* the heartbeat's deadlines;
* every protocol error: the connection then closes, with an ``error`` (id nil) for the
  peer waiting in :meth:`~ProtocolCore.data_to_send`.

Bodies the core produces on its own (a pong, a refusal it can decide by itself, the
fatal error) wait in :meth:`~ProtocolCore.data_to_send`; bodies for intents are
returned by the intent itself. Either way they must be sent in the order they came
out of the core.
"""

from __future__ import annotations

from collections import deque

from ..errors import ErrorCode, SpearError
from .events import (
    CancelReceived,
    ConnectionClosed,
    CreditReceived,
    ErrorReceived,
    Event,
    ItemReceived,
    RequestReceived,
    ResponseReceived,
)
from .framing import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, ProtocolError
from .messages import (
    PROTOCOL_VERSION,
    Cancel,
    Credit,
    Error,
    Goodbye,
    Hello,
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

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the agent's start-up
    from typing import Any

__all__ = [
    "MAX_HELLO_SIZE",
    "MIN_FRAME_SIZE",
    "CancelReceived",
    "ConnectionClosed",
    "CreditReceived",
    "ErrorReceived",
    "Event",
    "ItemReceived",
    "ProtocolCore",
    "RequestReceived",
    "ResponseReceived",
    "check_hello",
    "check_welcome",
]

MAX_HELLO_SIZE = 8 * 1024
"""Largest ``hello`` body an accepter reads before authentication (docs/protocol.md §4)."""
MIN_FRAME_SIZE = 1024
"""Smallest ``max_frame_size`` a peer may announce (docs/protocol.md §4)."""


# -- the handshake's rules ---------------------------------------------------------
def check_hello(message: object) -> Hello:
    """The opener's first message, checked (docs/protocol.md §4): a :class:`ProtocolError`
    unless it is a hello of our version with a usable ``max_frame_size``."""
    if not isinstance(message, Hello):
        raise ProtocolError(f"expected hello, got {getattr(message, 'TYPE', type(message).__name__)}")
    _check_version(message.version)
    if message.max_frame_size is not None:
        _check_frame_size(message.max_frame_size)
    return message


def check_welcome(message: object) -> Welcome:
    """The accepter's answer, checked: an ``error`` is raised as the refusal it is; a
    :class:`ProtocolError` unless it is a welcome of our version with usable values."""
    if isinstance(message, Error):
        raise message.to_exception()
    if not isinstance(message, Welcome):
        raise ProtocolError(f"expected welcome, got {getattr(message, 'TYPE', type(message).__name__)}")
    _check_version(message.version)
    _check_frame_size(message.max_frame_size)
    return message


def _check_version(version: int) -> None:
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"peer speaks protocol version {version}, we speak {PROTOCOL_VERSION}")


def _check_frame_size(size: int) -> None:
    if size < MIN_FRAME_SIZE:
        raise ProtocolError(f"max_frame_size {size} is below the minimum of {MIN_FRAME_SIZE}")


# -- per-request state --------------------------------------------------------------
class _Outgoing:
    """One of our requests awaiting its terminal answer."""

    __slots__ = ("batch", "cancelled", "credit", "next_seq", "stream", "unacked")

    def __init__(self, window: int | None) -> None:
        self.stream = window is not None
        self.credit = window or 0  # items the peer may still send us
        self.batch = max(1, (window or 0) // 2)  # credit is granted this many at a time
        self.next_seq = 0
        self.unacked = 0  # items taken by our consumer and not yet granted back
        self.cancelled = False


class _Incoming:
    """One of the peer's requests we serve, not answered yet."""

    __slots__ = ("cancelled", "credit", "sent", "stream")

    def __init__(self, window: int | None) -> None:
        self.stream = window is not None
        self.credit = window or 0  # items we may still send
        self.sent = 0
        self.cancelled = False


# -- the core ------------------------------------------------------------------------
class ProtocolCore:
    """One side of an open connection: the rules, with no I/O.

    *max_frame_size* bounds the bodies it accepts; *peer_max_frame_size* the bodies
    it produces (the peer's announced limit). *serves* False: the peer's requests are
    refused NOT_FOUND at once (a side that only calls). Heartbeat: *now* is the time
    the connection opened, on the caller's clock.
    """

    def __init__(
        self,
        *,
        now: float,
        heartbeat_interval: float = 5.0,
        heartbeat_timeout: float = 15.0,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        peer_max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        serves: bool = True,
    ) -> None:
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.max_frame_size = max_frame_size
        self.peer_max_frame_size = peer_max_frame_size
        self.serves = serves
        self._decoder = FrameDecoder(max_frame_size)
        self._bodies: deque[bytes] = deque()  # received, not yet turned into events
        self._eof = False  # the peer closed, after the bodies in _bodies
        self._framing_error: ProtocolError | None = None  # after the bodies in _bodies
        self._out: list[bytes] = []  # bodies the core produced on its own
        self._next_id = 1
        self._peer_last_id = 0
        self.pending: dict[int, _Outgoing] = {}
        """Our requests awaiting their terminal answer, by id."""
        self.serving: dict[int, _Incoming] = {}
        """The peer's requests not answered yet, by id."""
        self.close_reason: SpearError | None = None
        """Why the connection closed (None while open)."""
        self.last_received = now
        self._next_ping = now + heartbeat_interval
        self._ping_seq = 0

    # -- state -----------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once the connection is over; intents then raise the close reason."""
        return self.close_reason is not None

    def _check_open(self) -> None:
        reason = self.close_reason
        if reason is not None:
            raise SpearError(reason.code, reason.message)

    # -- input -------------------------------------------------------------------
    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes of a framed stream (docs/protocol.md §1.1), cut anywhere.
        ``b""`` means the peer closed its side (EOF)."""
        if self.closed or self._eof or self._framing_error is not None:
            return
        self.last_received = now
        if not data:
            self._eof = True
            return
        decoder = self._decoder
        try:
            decoder.feed(data)
            while (body := decoder.next_body()) is not None:
                self._bodies.append(body)
        except ProtocolError as exc:
            self._framing_error = exc
        if decoder.closed:
            self._eof = True

    def receive_body(self, body: bytes | None, now: float) -> None:
        """Feed one whole body (a websocket message, or a frame a transport decoded);
        None means the peer closed."""
        if self.closed or self._eof:
            return
        self.last_received = now
        if body is None:
            self._eof = True
        else:
            self._bodies.append(body)

    def event_for(self, body: bytes, now: float) -> Event | None:
        """:meth:`receive_body` then :meth:`next_event`, in one call: the event of one
        whole body (None when it makes none, e.g. a pong). A driver that feeds bodies
        one at a time calls this and nothing else on its hot path."""
        if self._bodies or self.closed or self._eof:
            self.receive_body(body, now)
            return self.next_event()
        self.last_received = now
        try:
            return self._handle(decode_message(body))
        except ProtocolError as exc:
            return self.protocol_error(exc)

    def next_event(self) -> Event | None:
        """The next event from what was received, or None when more input is needed."""
        bodies = self._bodies
        while bodies:
            body = bodies.popleft()
            try:
                event = self._handle(decode_message(body))
            except ProtocolError as exc:
                return self.protocol_error(exc)
            if event is not None:
                return event
        if self.closed:
            return None
        if self._framing_error is not None:
            return self.protocol_error(self._framing_error)
        if self._eof:
            return self._close(SpearError(ErrorCode.UNAVAILABLE, "peer closed the connection"))
        return None

    def _handle(self, message: Any) -> Event | None:
        kind = type(message)
        if kind is Request:
            return self._on_request(message)
        if kind is Response:
            entry = self.pending.get(message.id)
            if entry is None:
                return None
            del self.pending[message.id]
            return ResponseReceived(message.id, message.result)
        if kind is StreamItem:
            return self._on_item(message)
        if kind is StreamEnd:
            entry = self.pending.get(message.id)
            if entry is None:
                return None
            if not entry.stream:
                raise ProtocolError(f"stream_end for unary request {message.id}")
            if message.seq != entry.next_seq:
                raise ProtocolError(
                    f"stream {message.id}: stream_end says {message.seq} items, {entry.next_seq} arrived"
                )
            del self.pending[message.id]
            return ResponseReceived(message.id, message.result)
        if kind is Error:
            if message.id is None:
                return self._close(SpearError(ErrorCode(message.code), f"peer reported: {message.message}"))
            if self.pending.pop(message.id, None) is None:
                return None
            return ErrorReceived(message.id, message.to_exception())
        if kind is Cancel:
            incoming = self.serving.get(message.id)
            if incoming is None or incoming.cancelled:
                return None
            incoming.cancelled = True
            return CancelReceived(message.id, message.reason or "cancelled by peer")
        if kind is Credit:
            incoming = self.serving.get(message.id)
            if incoming is None or not incoming.stream:
                return None
            incoming.credit += message.n
            return CreditReceived(message.id, message.n)
        if kind is Ping:
            self._out.append(self._encode(Pong(message.seq, message.payload)))
            return None
        if kind is Pong:
            return None
        if kind is Goodbye:
            return self._close(SpearError(ErrorCode.UNAVAILABLE, f"peer said goodbye: {message.reason}"))
        raise ProtocolError(f"unexpected {message.TYPE} after the handshake")

    def _on_request(self, message: Request) -> Event | None:
        request_id = message.id
        if request_id <= self._peer_last_id:
            if request_id == 0:
                raise ProtocolError("request id 0: ids start at 1")
            raise ProtocolError(
                f"request id {request_id} is not above the previous one ({self._peer_last_id}); ids only increase"
            )
        self._peer_last_id = request_id
        if not self.serves:
            self._out.append(
                self._encode(Error(request_id, ErrorCode.NOT_FOUND.value, f"no such method: {message.method}"))
            )
            return None
        if message.timeout_ms == 0:  # §7: a deadline of 0 ms has passed on arrival
            self._out.append(
                self._encode(
                    Error(request_id, ErrorCode.DEADLINE_EXCEEDED.value, f"{message.method}: deadline of 0 ms exceeded")
                )
            )
            return None
        self.serving[request_id] = _Incoming(message.window)
        return RequestReceived(request_id, message.method, message.params, message.timeout_ms, message.window)

    def _on_item(self, message: StreamItem) -> Event | None:
        entry = self.pending.get(message.id)
        if entry is None:
            return None
        if not entry.stream:
            raise ProtocolError(f"stream_item for unary request {message.id}")
        if message.seq != entry.next_seq:
            raise ProtocolError(f"stream {message.id}: item seq {message.seq}, expected {entry.next_seq}")
        if entry.credit <= 0:
            raise ProtocolError(f"stream {message.id}: peer sent more items than its credit")
        entry.credit -= 1
        entry.next_seq += 1
        return ItemReceived(message.id, message.seq, message.data)

    # -- intents: calling ----------------------------------------------------------
    def request(
        self, method: str, params: Any = None, *, timeout_ms: int | None = None, window: int | None = None
    ) -> tuple[int, bytes]:
        """Start a request: returns its id and the body to send.

        Raises the close reason when closed, RESOURCE_EXHAUSTED when the body is over
        the peer's frame limit, PROTOCOL_ERROR when *params* cannot be encoded (no id
        is used up then).
        """
        self._check_open()
        request_id = self._next_id
        body = self._encode(Request(request_id, method, params, timeout_ms, window))
        self._next_id = request_id + 1
        self.pending[request_id] = _Outgoing(window)
        return request_id, body

    def cancel(self, request_id: int, reason: str) -> bytes | None:
        """Give up our request: the body of the cancel to send, or None when there is
        nothing to cancel (answered already, cancelled already, or closed). The request
        stays pending, so the peer's confirming answer is still reported, until it
        arrives or :meth:`forget` drops it."""
        entry = self.pending.get(request_id)
        if entry is None or entry.cancelled or self.closed:
            return None
        entry.cancelled = True
        return self._encode(Cancel(request_id, reason))

    def forget(self, request_id: int) -> None:
        """Stop waiting for request *request_id*: its answer, if any comes, is ignored."""
        self.pending.pop(request_id, None)

    def withdraw(self, request_id: int) -> None:
        """Forget a request whose body was never sent (its id stays used: ids only
        increase, they need not be consecutive)."""
        self.pending.pop(request_id, None)

    def item_taken(self, request_id: int) -> bytes | None:
        """Our consumer took one item of stream *request_id*: a credit body to send
        when enough items were taken since the last one (every ``window // 2``)."""
        entry = self.pending.get(request_id)
        if entry is None or entry.cancelled:
            return None
        entry.unacked += 1
        if entry.unacked < entry.batch:
            return None
        n, entry.unacked = entry.unacked, 0
        entry.credit += n
        return self._encode(Credit(request_id, n))

    # -- intents: serving ------------------------------------------------------------
    def credit(self, request_id: int) -> int:
        """Items we may send now on stream answer *request_id* (0 when not serving it)."""
        incoming = self.serving.get(request_id)
        return 0 if incoming is None else incoming.credit

    def send_item(self, request_id: int, data: Any) -> bytes:
        """The body of the next item of stream answer *request_id*.

        Raises FAILED_PRECONDITION when the request is not a stream we serve, or is
        answered already; RESOURCE_EXHAUSTED without credit (wait for
        :class:`CreditReceived`) or when the item is over the peer's frame limit.
        """
        self._check_open()
        incoming = self.serving.get(request_id)
        if incoming is None or not incoming.stream:
            state = "is not a stream" if incoming is not None else "is not being served"
            raise SpearError(ErrorCode.FAILED_PRECONDITION, f"request {request_id} {state}")
        if incoming.credit <= 0:
            raise SpearError(ErrorCode.RESOURCE_EXHAUSTED, f"stream {request_id}: no credit from the consumer")
        body = self._encode(StreamItem(request_id, incoming.sent, data))
        incoming.credit -= 1
        incoming.sent += 1
        return body

    def items_sent(self, request_id: int) -> int:
        """Items sent so far on stream answer *request_id*."""
        incoming = self.serving.get(request_id)
        return 0 if incoming is None else incoming.sent

    def respond(self, request_id: int, result: Any = None) -> bytes | None:
        """The successful terminal answer to the peer's request: ``response``, or
        ``stream_end`` for a stream (the answer follows the shape of the request).
        None when it was answered already (or the connection is closed): one answer
        per request. Raises like :meth:`send_item` when *result* cannot be sent; the
        request then still waits for its answer (say why with :meth:`fail`)."""
        incoming = self.serving.get(request_id)
        if incoming is None or self.closed:
            return None
        if incoming.stream:
            body = self._encode(StreamEnd(request_id, incoming.sent, result))
        else:
            body = self._encode(Response(request_id, result))
        del self.serving[request_id]
        return body

    def fail(self, request_id: int, error: SpearError) -> bytes | None:
        """The failing terminal answer to the peer's request (None: answered already)."""
        if self.serving.pop(request_id, None) is None or self.closed:
            return None
        try:
            return self._encode(Error.from_exception(request_id, error))
        except SpearError:  # details that cannot be sent: the code and message can
            return self._encode(Error(request_id, error.code.value, error.message[:4096]))

    # -- heartbeat and closing ---------------------------------------------------------
    def next_deadline(self) -> float:
        """When :meth:`check_heartbeat` must next be called."""
        return min(self._next_ping, self.last_received + self.heartbeat_timeout)

    def check_heartbeat(self, now: float) -> ConnectionClosed | None:
        """At or after :meth:`next_deadline`: queue a ping when one is due, or close
        (returning the event) when the peer has been silent past the timeout."""
        if self.closed:
            return None
        if now >= self.last_received + self.heartbeat_timeout:
            return self._close(
                SpearError(ErrorCode.UNAVAILABLE, f"peer silent for {self.heartbeat_timeout:g}s (heartbeat timeout)")
            )
        if now >= self._next_ping:
            self._ping_seq += 1
            self._out.append(self._encode(Ping(self._ping_seq)))
            self._next_ping = now + self.heartbeat_interval
        return None

    def goodbye(self, reason: str) -> tuple[bytes | None, ConnectionClosed | None]:
        """Close in order: the goodbye body to send (last) and the closing event."""
        if self.closed:
            return None, None
        body = self._encode(Goodbye(reason))
        return body, self._close(SpearError(ErrorCode.UNAVAILABLE, f"connection closed locally: {reason}"))

    def lost(self, error: SpearError) -> ConnectionClosed | None:
        """The link failed under us (a write failed, the transport broke)."""
        return self._close(error)

    def protocol_error(self, exc: ProtocolError) -> ConnectionClosed | None:
        """The peer broke the protocol: queue the fatal ``error`` for it and close."""
        if self.closed:
            return None
        self._out.append(encode_message(Error.from_exception(None, exc)))
        return self._close(SpearError(ErrorCode.UNAVAILABLE, f"protocol error: {exc.message}"), exc)

    def _close(self, error: SpearError, cause: ProtocolError | None = None) -> ConnectionClosed | None:
        if self.closed:
            return None
        self.close_reason = error
        failed = list(self.pending)
        self.pending.clear()
        self.serving.clear()
        self._bodies.clear()
        return ConnectionClosed(error, failed, cause)

    # -- output -------------------------------------------------------------------------
    def data_to_send(self) -> list[bytes]:
        """Bodies the core produced on its own since the last call (pongs, pings,
        refusals, the fatal error), in order; send them before anything produced later."""
        out, self._out = self._out, []
        return out

    @property
    def has_data_to_send(self) -> bool:
        """Whether :meth:`data_to_send` has something."""
        return bool(self._out)

    def _encode(self, message: Any) -> bytes:
        body = encode_message(message)
        if len(body) > self.peer_max_frame_size:
            raise SpearError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"{message.TYPE} of {len(body)} bytes exceeds the frame limit of {self.peer_max_frame_size}",
            )
        return body

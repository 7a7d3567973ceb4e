"""The agent's connection to its node: the protocol core driven from threads.

The same :class:`~spear_actors.protocol.core.ProtocolCore` as the node's trio driver
holds every rule; here it is guarded by one lock, and three threads move bytes:

* the *reader* (the thread that called :meth:`AgentLink.serve`) receives bytes, feeds
  the core and hands events to the agent. It never waits to write: what it must
  send (pongs) is queued, so it keeps reading however slowly the node reads;
* the *writer* sends queued frames in order, all that queued up in one write. A
  thread that sends writes its frame itself when nothing is queued or being
  written and the socket takes it at once (``MSG_DONTWAIT``): the common case, with
  no hand-off to the writer;
* the *heartbeat* pings on the node's interval and ends the link when the node has
  been silent past the timeout, or has not taken our bytes for as long.

Producing a body and queueing it happen under the lock, so bodies leave in the
order the core made them.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections import deque

from ..errors import ErrorCode, SpearError
from ..protocol.core import ConnectionClosed, Event, ProtocolCore, check_welcome
from ..protocol.framing import AGENT_LINK_MAX_FRAME_SIZE, HEADER_SIZE, encode_frame
from ..protocol.messages import Hello, Message, decode_message, encode_message

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["AgentLink", "dial"]

_RECEIVE_SIZE = 65536  # not more: see protocol/transports.py
_HIGH_WATER = 4 * 1024 * 1024


class AgentLink:
    """One authenticated connection from the agent to its node."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.lock = threading.RLock()
        """Guards the core and the send queue (held with ``with``: a C-level lock,
        cheaper than entering the condition, which is Python code)."""
        self.changed = threading.Condition(self.lock)
        """Notified (under :attr:`lock`) when credit or room arrives, or the link closes."""
        self.core: ProtocolCore | None = None
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._write_started: float | None = None
        self.closed = False
        self._on_event: Callable[[Event], None] | None = None
        self._reader_epoch = 0  # which thread reads: see hand_over_reading
        self._events: deque[Event] = deque()  # read, not yet handed on: see _read
        self._ended = threading.Event()

    # -- the handshake -------------------------------------------------------------
    def handshake(self, hello: Hello) -> None:
        """Say hello and wait for the welcome; exits the process (status 2) when the
        node refuses the agent."""
        hello.max_frame_size = AGENT_LINK_MAX_FRAME_SIZE
        self._sock.sendall(encode_frame(encode_message(hello)))
        reply, rest = self._receive_welcome()
        try:
            welcome = check_welcome(reply)
        except SpearError as exc:
            print(f"spear agent: node refused us: {exc.code.value}: {exc.message}", file=sys.stderr)
            raise SystemExit(2) from None
        self.core = ProtocolCore(
            now=time.monotonic(),
            max_frame_size=AGENT_LINK_MAX_FRAME_SIZE,
            heartbeat_interval=max(welcome.heartbeat_interval_ms, 10) / 1000,
            heartbeat_timeout=max(welcome.heartbeat_timeout_ms, 10) / 1000,
            peer_max_frame_size=welcome.max_frame_size,
        )
        if rest:  # the node may send right after its welcome
            self.core.receive_data(rest, time.monotonic())

    def _receive_welcome(self) -> tuple[Message, bytes]:
        """The first frame's message, and the bytes received after it."""
        buffer = bytearray()
        while True:
            if len(buffer) >= HEADER_SIZE:
                length = int.from_bytes(buffer[:HEADER_SIZE], "little")
                if not 0 < length <= AGENT_LINK_MAX_FRAME_SIZE:
                    raise SystemExit(f"spear agent: bad first frame from the node ({length} bytes)")
                end = HEADER_SIZE + length
                if len(buffer) >= end:
                    return decode_message(bytes(buffer[HEADER_SIZE:end])), bytes(buffer[end:])
            data = self._sock.recv(_RECEIVE_SIZE)
            if not data:
                raise SystemExit("spear agent: the node closed the connection during the handshake")
            buffer += data

    # -- serving ---------------------------------------------------------------------
    def serve(self, on_event: Callable[[Event], None]) -> None:
        """Run the writer and heartbeat threads and read until the link ends; every
        event but the close goes to *on_event* (called without the lock). Returns
        when the link has ended, whichever thread was reading by then."""
        assert self.core is not None
        self._on_event = on_event
        threading.Thread(target=self._writer, name="spear-writer", daemon=True).start()
        threading.Thread(target=self._heartbeat, name="spear-heartbeat", daemon=True).start()
        if not self._read(self._reader_epoch):
            self._ended.wait()  # another thread reads now (see hand_over_reading)

    def hand_over_reading(self) -> None:
        """Start a new reader thread: the current reader is running a function
        inline and must not hold up reading (cancels, pings) any longer. It leaves
        its loop once that event is handled. Call under the lock."""
        self._reader_epoch += 1
        epoch = self._reader_epoch
        threading.Thread(target=self._read, args=(epoch,), name="spear-reader", daemon=True).start()

    def _read(self, epoch: int) -> bool:
        """Read and hand events on while this thread is the reader (*epoch*).
        True when the link ended here; False once another thread took over.

        What one read brings is turned into events under one lock round and handed
        on in order from :attr:`_events`. Only the reader touches that queue, and a
        hand-over happens only while the reader runs a function inline (between two
        events, with the events it has not handed on yet still in the queue): so
        the successor hands those on first, and the epoch, which changes only
        then, is read without the lock after each event."""
        core = self.core
        assert core is not None
        on_event = self._on_event
        assert on_event is not None
        sock = self._sock
        lock = self.lock
        events = self._events
        data: bytes | None = None
        try:
            while True:
                with lock:  # once per read
                    if data is not None:
                        core.receive_data(data, time.monotonic())
                    while (event := core.next_event()) is not None:
                        events.append(event)
                    if core.has_data_to_send:
                        self._flush_core()
                    if not events and core.close_reason is not None:  # closed by the heartbeat thread
                        break
                closed: ConnectionClosed | None = None
                while events:
                    event = events.popleft()
                    if type(event) is ConnectionClosed:
                        closed = event
                        break
                    on_event(event)
                    if self._reader_epoch != epoch:
                        return False
                if closed is not None:
                    if closed.error.code != ErrorCode.UNAVAILABLE:
                        print(f"spear agent: node reported {closed.error}", file=sys.stderr)
                    self._last_words()
                    break
                try:
                    data = sock.recv(_RECEIVE_SIZE)
                except OSError:
                    data = b""
        except BaseException:
            self._end()
            raise
        self._end()
        return True

    def _end(self) -> None:
        self.close()
        self._ended.set()

    # -- sending ---------------------------------------------------------------------
    def send(self, produce: Callable[[ProtocolCore], bytes | None]) -> None:
        """Make a body with the core (under the lock) and queue it; never waits."""
        with self.lock:
            if self.core is None or self.closed:
                return
            self.enqueue(produce(self.core))

    def send_waiting(self, produce: Callable[[ProtocolCore], bytes | None]) -> None:
        """Like :meth:`send`, but first wait while more than 4 MiB is queued (stream
        items from a fast generator: the node reading slowly holds it back)."""
        with self.lock:
            while self._queued_bytes > _HIGH_WATER and not self.closed:
                self.changed.wait()
            if self.core is None or self.closed:
                return
            self.enqueue(produce(self.core))

    def enqueue(self, body: bytes | None) -> None:
        """Send *body* (made by the core; None: nothing) from this thread when
        nothing is queued or being written and the socket takes it without waiting
        (the common case: no hand-off to the writer thread); otherwise, or for the
        rest of a frame the socket did not take, queue it for the writer. Call under
        the lock, so bodies keep the core's order; never waits, so the reader never
        stops reading to write."""
        if body is None:
            return
        frame = encode_frame(body)
        if not self._queue and self._write_started is None and not self.closed:
            try:
                sent = self._sock.send(frame, socket.MSG_DONTWAIT)
            except OSError:  # full (BlockingIOError), or broken: the writer finds out
                sent = 0
            if sent == len(frame):
                return
            frame = frame[sent:]
        self._queue.append(frame)
        self._queued_bytes += len(frame)
        self.changed.notify_all()

    def _flush_core(self) -> None:
        assert self.core is not None
        for body in self.core.data_to_send():
            self.enqueue(body)

    def _writer(self) -> None:
        sock = self._sock
        changed = self.changed
        while True:
            with self.lock:
                while not self._queue and not self.closed:
                    changed.wait()
                if self.closed:
                    return
                bodies = list(self._queue)
                self._queue.clear()
                self._queued_bytes = 0
                self._write_started = time.monotonic()
                changed.notify_all()  # room for senders waiting on the high-water mark
            try:
                sock.sendall(b"".join(bodies))
            except OSError:
                self._abort()
                return
            finally:
                self._write_started = None

    def _last_words(self) -> None:
        """Send what the core queued on closing (a protocol error), briefly."""
        with self.lock:
            self._flush_core()
            frames, self._queue = list(self._queue), deque()
        if frames:
            try:
                self._sock.settimeout(0.5)
                self._sock.sendall(b"".join(frames))
            except OSError:
                pass

    # -- heartbeat and closing ------------------------------------------------------------
    def _heartbeat(self) -> None:
        core = self.core
        assert core is not None
        while True:
            with self.lock:
                if self.closed or core.closed:
                    return
                delay = core.next_deadline() - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            now = time.monotonic()
            with self.lock:
                started = self._write_started
                if started is not None and now - started >= core.heartbeat_timeout:
                    stalled = True
                else:
                    stalled = False
                    event = core.check_heartbeat(now)
                    self._flush_core()
            if stalled or event is not None:
                print("spear agent: node silent past the heartbeat timeout; exiting", file=sys.stderr)
                self._abort()
                return

    def _abort(self) -> None:
        """End the link now: the reader's next read fails and it stops."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        """Stop every thread and close the socket."""
        with self.lock:
            self.closed = True
            self.changed.notify_all()
        try:
            self._sock.close()
        except OSError:
            pass


def dial(address: str) -> socket.socket:
    """Connect to ``unix:///path``, ``tcp://host:port`` or ``ws(s)://host:port/path``
    (``SERVICE_ADDR``)."""
    if address.startswith(("ws://", "wss://")):
        from .websocket_dial import dial_websocket  # only agents that dial over websocket pay for it

        # duck-typed: it has the socket methods the link uses
        return dial_websocket(address)  # type: ignore[return-value]
    if address.startswith("unix://"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(address[len("unix://") :])
        return sock
    if address.startswith("tcp://"):
        host, _, port = address[len("tcp://") :].rpartition(":")
        sock = socket.create_connection((host.strip("[]"), int(port)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise SystemExit(f"spear agent: unsupported SERVICE_ADDR {address!r}")

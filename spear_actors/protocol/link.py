"""What both roles of a trio connection share: the core, the outbox, closing, heartbeat.

:class:`Link` is the base of :class:`~.connection.Connection`. It holds the sans-IO
:class:`~.core.ProtocolCore` (all protocol rules live there), the
:class:`~.outbox.Outbox` (all writing), and turns the core's events into trio
wake-ups; :mod:`.calling` and :mod:`.serving` add the two roles on top.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any, Final

import trio

from ..errors import ErrorCode, SpearError
from .core import ConnectionClosed, Event, ProtocolCore
from .framing import DEFAULT_MAX_FRAME_SIZE, ProtocolError
from .messages import Hello, Welcome
from .outbox import Outbox
from .transports import Transport

__all__ = ["ConnectionConfig", "Link"]

log = logging.getLogger(__name__)

_CLOSE_GRACE: Final = 0.5


@dataclasses.dataclass(slots=True)
class ConnectionConfig:
    """Tunables of a connection. The accepting side's heartbeat values win: its
    welcome tells the opening side which to use."""

    heartbeat_interval: float = 5.0
    """Seconds between pings sent by each side."""
    heartbeat_timeout: float = 15.0
    """Seconds of silence after which the peer is declared dead; also how long
    answers may stay queued unsent (a peer that does not read) before it is dead."""
    handshake_timeout: float = 10.0
    """Seconds the accepting side waits for a hello (and the opener for a welcome)."""
    max_inflight_handlers: int = 64
    """Incoming requests served at once; more wait for a slot (they do not fail)."""
    max_queued_handlers: int = 4096
    """Incoming requests waiting for a slot before the reader stops reading (backpressure)."""
    max_bytes_in_service: int = 64 * 1024 * 1024
    """Bytes of incoming requests (their bodies) being served or waiting for a slot
    above which the reader stops reading until some are answered (backpressure)."""
    stream_window: int = 16
    """Default credit granted for an outgoing stream request."""
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    """Largest body accepted (and sent, unless the peer announced a smaller one)."""
    send_high_water: int = 4 * 1024 * 1024
    """Bytes queued for sending above which senders wait, and the reader of a
    connection that serves requests stops reading (backpressure on a peer that
    sends requests but does not read their answers)."""
    callers_read: bool = True
    """Whether a caller may read its own answer (a connection that serves no
    requests, over a plain socket; :mod:`.calling`). False leaves all reading to the
    reader task: a node relaying calls over a connection spends less CPU so."""


class Link:
    """The shared half of a connection (see the module docstring)."""

    def __init__(
        self,
        transport: Transport,
        config: ConnectionConfig,
        *,
        serves: bool,
        peer: Hello | Welcome,
        identity: Any = None,
        peer_max_frame_size: int | None = None,
    ) -> None:
        self.transport = transport
        self.config = config
        self.peer = peer
        """The peer's hello (on the accepting side) or welcome (on the opening side)."""
        self.identity = identity
        """What the authenticator returned for the peer (accepting side)."""
        self.core = ProtocolCore(
            now=trio.current_time(),
            heartbeat_interval=config.heartbeat_interval,
            heartbeat_timeout=config.heartbeat_timeout,
            max_frame_size=config.max_frame_size,
            peer_max_frame_size=peer_max_frame_size or config.max_frame_size,
            serves=serves,
        )
        self._outbox = Outbox(transport, high_water=config.send_high_water, on_lost=self._die)
        self._closed_event = trio.Event()
        self._close_reason: SpearError | None = None
        self._nursery: trio.Nursery | None = None
        self.on_unconfirmed_cancel: Callable[[str, int], None] | None = None
        """Called with (method, request id) when a peer does not confirm a cancel
        within the caller's ``cancel_grace``."""

    # -- state ---------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once the connection is closed or dead; calls then fail UNAVAILABLE."""
        return self._close_reason is not None

    @property
    def close_reason(self) -> SpearError | None:
        """Why the connection closed (None while open)."""
        return self._close_reason

    async def wait_closed(self) -> None:
        """Return once the connection has closed, for whatever reason."""
        await self._closed_event.wait()

    def _check_open(self) -> None:
        reason = self._close_reason
        if reason is not None:
            raise SpearError(reason.code, reason.message)

    # -- sending ---------------------------------------------------------------------
    def _put(self, body: bytes | None) -> None:
        """Send a body the core produced, without waiting (a lost link closes us)."""
        if body is not None and not self._outbox.closed:
            try:
                self._outbox.put(body)
            except SpearError:
                pass  # _die has run

    def _flush_core(self) -> None:
        """Send what the core produced on its own (pongs, pings, refusals)."""
        if self.core.has_data_to_send:
            for body in self.core.data_to_send():
                self._put(body)

    # -- events ------------------------------------------------------------------------
    def _dispatch(self, event: Event) -> None:
        """Act on an event other than a request or the close (roles override)."""
        raise NotImplementedError

    async def _closing(self, event: ConnectionClosed) -> None:
        """The core closed: send what is queued (its last words: the fatal error)
        briefly, then die."""
        if event.cause is not None:
            self.transport.closing_because(event.cause)
        with trio.move_on_after(_CLOSE_GRACE) as scope:
            scope.shield = True
            self._flush_core()
            await self._outbox.flush()
        self._die(event.error)

    async def _protocol_error(self, exc: ProtocolError) -> None:
        log.warning("%s: protocol error from peer: %s", self.transport.description, exc.message)
        event = self.core.protocol_error(exc)
        if event is not None:
            await self._closing(event)

    # -- closing -------------------------------------------------------------------------
    def _die(self, reason: SpearError) -> None:
        """Close now: fail everything in flight with *reason* and stop the tasks."""
        if self._close_reason is not None:
            return
        self._close_reason = reason
        self.core.lost(reason)
        self._fail_calls(reason)
        self._cancel_handlers()
        self._outbox.close()
        self._closed_event.set()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _fail_calls(self, reason: SpearError) -> None:
        """Fail every call in flight (the calling role)."""

    def _cancel_handlers(self) -> None:
        """Cancel every handler running (the serving role)."""

    async def aclose(self, reason: str = "closing") -> None:
        """Say goodbye and close. Calls still in flight fail with UNAVAILABLE."""
        if self.closed:
            return
        body, _ = self.core.goodbye(reason)
        with trio.move_on_after(_CLOSE_GRACE) as scope:
            scope.shield = True
            self._put(body)
            await self._outbox.flush()
        self._die(SpearError(ErrorCode.UNAVAILABLE, f"connection closed locally: {reason}"))

    # -- heartbeat -------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        core = self.core
        timeout = self.config.heartbeat_timeout
        while True:
            await trio.sleep_until(core.next_deadline())
            now = trio.current_time()
            started = self._outbox.write_started
            if started is not None and now - started >= timeout:
                # §8: a peer that has not taken our bytes for the whole timeout is dead
                self._die(SpearError(ErrorCode.UNAVAILABLE, f"peer has not read for {timeout:g}s (heartbeat timeout)"))
                return
            event = core.check_heartbeat(now)
            if event is not None:
                self._die(event.error)
                return
            self._flush_core()

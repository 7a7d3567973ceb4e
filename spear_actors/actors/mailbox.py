"""Actor primitives: a bounded inbox, a reference to send to it, and one-shot replies.

An actor is a trio task that owns some state and changes it only in response to
messages from its inbox. Its message handler is synchronous on purpose: it cannot
await, so slow work has to be started as a task in the actor's own nursery and
the actor keeps serving its inbox (a long execution never blocks a status query).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import trio

from ..errors import ErrorCode, SpearError

__all__ = ["Actor", "ActorRef", "Reply", "fail_reply", "take_queued"]

T = TypeVar("T")
M = TypeVar("M")

_BATCH = 64  # messages an actor handles per wake-up beyond the first


class Reply(Generic[T]):
    """A one-shot answer slot: set once (value or :class:`SpearError`), awaited once.

    Later answers are ignored, so several parties (the worker, a timeout, the
    teardown of an actor) may race to answer and exactly one wins.
    """

    __slots__ = ("_done", "_error", "_event", "_value", "on_done")

    def __init__(self) -> None:
        self._done = False
        self._event: trio.Event | None = None
        """Made by the first :meth:`wait` (many replies are only read, never awaited)."""
        self._value: T | None = None
        self._error: SpearError | None = None
        self.on_done: Callable[[Reply[T]], None] | None = None
        """Called once, synchronously, by whoever answers (to post a notification)."""

    @property
    def error(self) -> SpearError | None:
        """The error it was answered with (None if a value, or not answered yet)."""
        return self._error

    @property
    def value(self) -> T | None:
        """The value it was answered with (None if an error, or not answered yet)."""
        return self._value

    def _answered(self) -> None:
        self._done = True
        if self._event is not None:
            self._event.set()
        on_done = self.on_done
        if on_done is not None:
            # one-shot: dropped once called, so that a callback holding this reply
            # (a closure over it) is no reference cycle left for the garbage collector
            self.on_done = None
            on_done(self)

    @property
    def done(self) -> bool:
        """True once answered."""
        return self._done

    def send(self, value: T) -> None:
        """Answer with a value (ignored if already answered)."""
        if not self._done:
            self._value = value
            self._answered()

    def fail(self, error: SpearError) -> None:
        """Answer with an error (ignored if already answered)."""
        if not self._done:
            self._error = error
            self._answered()

    async def wait(self) -> T:
        """Wait for the answer; return the value or raise the error."""
        if self._done:
            await trio.lowlevel.checkpoint()
        else:
            if self._event is None:
                self._event = trio.Event()
            await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


class ActorRef(Generic[M]):
    """The only way to reach an actor: send it messages."""

    __slots__ = ("_send", "name")

    def __init__(self, name: str, send: trio.MemorySendChannel[M]) -> None:
        self.name = name
        self._send = send

    def __repr__(self) -> str:
        return f"<ActorRef {self.name}>"

    def tell_nowait(self, message: M) -> None:
        """Send without waiting: RESOURCE_EXHAUSTED if the inbox is full,
        UNAVAILABLE if the actor has stopped."""
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            raise SpearError(
                ErrorCode.RESOURCE_EXHAUSTED, f"{self.name} is saturated", {"retry_after_ms": 10}
            ) from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise SpearError(ErrorCode.UNAVAILABLE, f"{self.name} has stopped") from None

    def post(self, message: M) -> None:
        """Deliver without waiting and without failing: for notifications a child
        owes its parent. If the inbox is momentarily full, a system task delivers
        it as soon as there is room; if the actor has stopped, it is dropped."""
        try:
            self.tell_nowait(message)
        except SpearError as exc:
            if exc.code is ErrorCode.RESOURCE_EXHAUSTED:
                trio.lowlevel.spawn_system_task(self._deliver_later, message)

    async def _deliver_later(self, message: M) -> None:
        try:
            await self._send.send(message)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def tell(self, message: M) -> None:
        """Send, waiting while the inbox is full (backpressure); UNAVAILABLE if stopped."""
        try:
            await self._send.send(message)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise SpearError(ErrorCode.UNAVAILABLE, f"{self.name} has stopped") from None

    async def send(self, message: M) -> None:
        """Like :meth:`tell`, but without a pass through trio's run loop when the
        inbox has room (no checkpoint: the caller must checkpoint afterwards, as
        one that then waits for an answer does)."""
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            await self.tell(message)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise SpearError(ErrorCode.UNAVAILABLE, f"{self.name} has stopped") from None

    async def ask(self, build: Callable[[Reply[T]], M]) -> T:
        """Send ``build(reply)`` and wait for the reply's value (or its error).

        The receiving actor guarantees an answer: from its handler, or from its
        teardown (UNAVAILABLE) if it stops first. Sending yields only when the
        inbox is full: the wait that follows is the checkpoint (one wake-up per ask,
        not one for the send and one for the answer).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        reply: Reply[T] = Reply()
        await self.send(build(reply))
        return await reply.wait()


class Actor(abc.ABC, Generic[M]):
    """Base class: a bounded inbox served by a synchronous :meth:`handle`.

    Start with ``ref = await nursery.start(actor.run)`` (or ``start_soon`` and use
    :attr:`ref`, which exists from construction). Messages with a ``reply``
    attribute that are still in the inbox when the actor stops are answered
    UNAVAILABLE, so no ask ever hangs on a dead actor.
    """

    inbox_size: int = 256

    def __init__(self, name: str) -> None:
        self.name = name
        send, self._inbox = trio.open_memory_channel[M](self.inbox_size)
        self.ref: ActorRef[M] = ActorRef(name, send)
        self._nursery: trio.Nursery | None = None
        self.stopped = False

    @property
    def nursery(self) -> trio.Nursery:
        """The actor's own nursery, for the work its handler starts."""
        assert self._nursery is not None, "actor is not running"
        return self._nursery

    async def run(self, *, task_status: trio.TaskStatus[ActorRef[M]] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the inbox until :meth:`stop` or cancellation."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self.on_start()
                task_status.started(self.ref)
                await self._serve_inbox()
                nursery.cancel_scope.cancel()
        finally:
            self.stopped = True
            self.on_stop()
            self.close_inbox()

    async def _serve_inbox(self) -> None:
        """Handle messages until stopped or the inbox closes. Whatever is already
        queued when the actor wakes is handled in the same step, up to
        ``_BATCH`` messages (one pass through trio's run loop per batch, not per
        message; the bound keeps one busy actor from holding the loop)."""
        inbox = self._inbox
        handle = self.handle
        while True:
            try:
                message = await inbox.receive()
            except trio.EndOfChannel:
                return
            handle(message)
            for _ in range(_BATCH):
                if self._has_stopped():
                    return
                try:
                    message = inbox.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                handle(message)
            if self._has_stopped():
                return

    def _has_stopped(self) -> bool:
        return self.stopped  # a call: mypy keeps no narrowing of it across handle()

    def stop(self) -> None:
        """Stop after the current message: cancels everything the actor started."""
        self.stopped = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def on_start(self) -> None:
        """Hook: runs inside the actor's nursery before it is announced as started."""

    def on_stop(self) -> None:
        """Hook: runs (synchronously) when the actor stops, for whatever reason."""

    @abc.abstractmethod
    def handle(self, message: M) -> None:
        """Process one message. Must not block: start slow work in :attr:`nursery`."""

    def close_inbox(self) -> None:
        """Refuse new messages and answer the ones left UNAVAILABLE (idempotent)."""
        self.ref._send.close()
        error = SpearError(ErrorCode.UNAVAILABLE, f"{self.name} stopped")
        for message in take_queued(self._inbox):
            fail_reply(message, error)
        self._inbox.close()


def take_queued(channel: trio.MemoryReceiveChannel[T]) -> list[T]:
    """Everything waiting in *channel* right now, without blocking."""
    queued: list[T] = []
    while True:
        try:
            queued.append(channel.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return queued


def fail_reply(message: Any, error: SpearError) -> None:
    """Answer *message*'s ``reply`` (if it carries one) with *error*, and those of
    the messages it bundles (``waits``)."""
    for bundled in getattr(message, "waits", ()):
        fail_reply(bundled, error)
    reply = getattr(message, "reply", None)
    if isinstance(reply, Reply):
        reply.fail(error)

"""One write per connection per run-loop pass.

A connection's :class:`~.outbox.Outbox` does not write each body the moment it is
put: bodies put during one pass of trio's run loop are gathered, and the
:class:`PassFlusher` writes each connection's batch once, right before the run loop
waits for I/O (``trio.abc.Instrument.before_io_wait``, called synchronously once
per pass). At 64 calls in flight this turns several ``write`` syscalls per pass
into one per connection, without a task step: the flush runs inside the run loop
itself, not in a task that would have to be woken.

The flusher is installed in a run while at least one outbox's writer task runs
(:func:`acquire` / :func:`release`, counted per run), and removed with the last
one, so a trio program embedding a node is left without it once the node's
connections have closed.
"""

from __future__ import annotations

import logging
from typing import Protocol

import trio

__all__ = ["PassFlusher", "acquire", "installed", "release"]

log = logging.getLogger(__name__)


class Flushable(Protocol):
    """What the flusher writes: an outbox with bodies gathered in this pass."""

    def flush_pass(self) -> None:
        """Write what was gathered, without waiting; never raises."""


class PassFlusher(trio.abc.Instrument):
    """The run's instrument: flushes every outbox marked during the pass."""

    def __init__(self) -> None:
        self.users = 0
        self._dirty: list[Flushable] = []

    def mark(self, outbox: Flushable) -> None:
        """Flush *outbox* before the run loop next waits (the caller marks it once
        per pass)."""
        self._dirty.append(outbox)

    def before_io_wait(self, timeout: float) -> None:
        dirty = self._dirty
        if not dirty:
            return
        self._dirty = []
        for outbox in dirty:
            try:
                outbox.flush_pass()
            except Exception:  # an instrument that raises is removed by trio
                log.exception("flushing a connection's writes failed")


_FLUSHER: trio.lowlevel.RunVar[PassFlusher | None] = trio.lowlevel.RunVar("spear_pass_flusher", default=None)


def acquire() -> PassFlusher:
    """The run's flusher, installed on first use; pair with :func:`release`."""
    flusher = _FLUSHER.get()
    if flusher is None:
        flusher = PassFlusher()
        _FLUSHER.set(flusher)
    if flusher.users == 0:
        trio.lowlevel.add_instrument(flusher)
    flusher.users += 1
    return flusher


def release(flusher: PassFlusher) -> None:
    """One user less; the last one removes the instrument from the run (what it
    still holds is flushed first)."""
    flusher.users -= 1
    if flusher.users == 0:
        flusher.before_io_wait(0.0)
        trio.lowlevel.remove_instrument(flusher)


def installed() -> bool:
    """Whether the current run has the flusher installed (some connection is open)."""
    flusher = _FLUSHER.get()
    return flusher is not None and flusher.users > 0

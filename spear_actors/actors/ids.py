"""Execution ids, cheap enough to make one per call, unguessable, in creation order.

An execution id is ``exec-<32 hex>``: a 48-bit timestamp (milliseconds since the
epoch, 12 hex digits) and then 80 random bits (20 hex digits). The random part makes
an id seen by one client tell nothing about another's (ids are the only handle on an
execution: they must not be guessable, which rules out a prefix + counter); 80 bits
keep a guess hopeless and a collision out of reach (two ids in the same millisecond
collide with probability 2**-80). The timestamp makes ids sort by creation, so the
SQLite store's unique index on ``execution_id`` grows at its end instead of at a
random page per row: half the writer thread's CPU per call (docs/performance.md).
The random bits come from ``os.urandom`` 4,000 bytes at a time, 400 ids per system
call.
"""

from __future__ import annotations

import os
import time

__all__ = ["RandomIds"]

_RANDOM_BYTES = 10
_BATCH_BYTES = 4000
_MS_MASK = (1 << 48) - 1


class RandomIds:
    """Hands out ids with a fixed prefix: a millisecond timestamp and 80 random bits,
    in hex. Not thread-safe: one owner (an actor) uses it."""

    __slots__ = ("_bits", "_position", "_prefix")

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._bits = b""
        self._position = 0

    def new(self) -> str:
        """A fresh id: the prefix and 32 hex digits (12 of time, 20 random)."""
        position = self._position
        if position >= len(self._bits):
            self._bits = os.urandom(_BATCH_BYTES)
            position = 0
        self._position = position + _RANDOM_BYTES
        stamp = int(time.time() * 1000) & _MS_MASK
        return f"{self._prefix}{stamp:012x}{self._bits[position : position + _RANDOM_BYTES].hex()}"

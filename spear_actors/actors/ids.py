"""Random ids, cheap enough to make one per call.

An execution id is ``exec-<32 hex>``: 128 random bits, as with ``uuid4``, so an id
seen by one client tells nothing about another's (ids are the only handle on an
execution: they must not be guessable, which rules out a prefix + counter). The
bits come from ``os.urandom`` 4 KiB at a time, 256 ids per system call: about
0.2 µs an id, against 1.7 µs for ``uuid.uuid4().hex``.
"""

from __future__ import annotations

import os

__all__ = ["RandomIds"]

_ID_BYTES = 16
_BATCH_BYTES = 4096


class RandomIds:
    """Hands out random hex ids with a fixed prefix. Not thread-safe: one owner
    (an actor) uses it."""

    __slots__ = ("_bits", "_position", "_prefix")

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._bits = b""
        self._position = 0

    def new(self) -> str:
        """A fresh id: the prefix and 32 hex digits."""
        position = self._position
        if position >= len(self._bits):
            self._bits = os.urandom(_BATCH_BYTES)
            position = 0
        self._position = position + _ID_BYTES
        return self._prefix + self._bits[position : position + _ID_BYTES].hex()

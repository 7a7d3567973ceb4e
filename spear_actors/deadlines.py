"""Deadlines of many waits, served by one timer task.

A cancel scope per wait costs every call its enter, exit and deadline registration
(several microseconds on the hot path). Where nobody is blocked in a task for the
wait itself — an answer that a callback delivers — a heap and one task that sleeps
until the earliest deadline do the same job for the price of a heap push.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Generic, TypeVar

import trio

__all__ = ["DeadlineQueue"]

T = TypeVar("T")

_COMPACT_SLACK = 64
"""Ended entries tolerated in the heap beyond twice the live ones."""


class DeadlineQueue(Generic[T]):
    """Entries with deadlines; :attr:`on_expired` gets each one whose deadline passes
    while :attr:`is_live` still says it is live.

    The owner calls :meth:`ended` once for every entry it added, however it ended
    (expired included): ended entries stay in the heap until their deadline passes or
    they outnumber the live ones, when the heap is compacted — so the heap's size stays
    proportional to the live entries, however long the deadlines are.

    The timer task is started in the nursery given to the first :meth:`add` and lives
    as long as that nursery.
    """

    def __init__(self, on_expired: Callable[[T], None], is_live: Callable[[T], bool]) -> None:
        self.on_expired = on_expired
        """Called (by the timer task) with an entry whose deadline passed."""
        self.is_live = is_live
        """Whether an entry still waits (an ended one is skipped)."""
        self._heap: list[tuple[float, int, T]] = []
        self._order = itertools.count()  # ties: first added, first expired (never compares entries)
        self._live = 0
        self._timer: trio.CancelScope | None = None
        self._started = False

    def __len__(self) -> int:
        """Entries added and not yet :meth:`ended`."""
        return self._live

    def add(self, deadline: float, entry: T, nursery: trio.Nursery) -> None:
        """Expire *entry* at *deadline* (trio time) unless it has ended by then."""
        heapq.heappush(self._heap, (deadline, next(self._order), entry))
        self._live += 1
        if not self._started:
            self._started = True
            nursery.start_soon(self._run)
        elif self._timer is not None and deadline < self._timer.deadline:
            self._timer.deadline = deadline

    def ended(self) -> None:
        """One entry added here has ended (answered, given up or expired)."""
        self._live -= 1
        heap = self._heap
        if len(heap) > _COMPACT_SLACK + 2 * self._live:
            is_live = self.is_live
            self._heap = [item for item in heap if is_live(item[2])]
            heapq.heapify(self._heap)

    async def _run(self) -> None:
        while True:
            with trio.CancelScope(deadline=self._heap[0][0] if self._heap else math.inf) as self._timer:
                await trio.sleep_forever()
            self._timer = None
            now = trio.current_time()
            # self._heap is read each time: an expiry may end entries, and so compact it
            while (heap := self._heap) and heap[0][0] <= now:
                _, _, entry = heapq.heappop(heap)
                if self.is_live(entry):
                    self.on_expired(entry)

"""Log lines for refusals that a flood could repeat thousands of times a second:
one line per class per interval, with the count of those not logged."""

from __future__ import annotations

import logging
import math

import trio

__all__ = ["RefusalLog"]

log = logging.getLogger("spear_actors.gateway")


class RefusalLog:
    """Rate-limited warnings, one stream per refusal class (e.g. ``"too many connections"``)."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        """Refusals per class since the start (for metrics and tests)."""

    def refused(self, kind: str, detail: str) -> None:
        """Count one refusal of *kind*; log it unless one was logged within the interval."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        now = trio.current_time()
        if now - self._last.get(kind, -math.inf) < self.interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last[kind] = now
        more = self._suppressed.pop(kind, 0)
        suffix = f" ({more} more since the last line)" if more else ""
        log.warning("refused a connection: %s: %s%s", kind, detail, suffix)

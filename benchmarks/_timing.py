"""Timing helpers shared by the harnesses (not a harness: `make bench` skips it)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any


def quantile(samples: list[float], q: float) -> float:
    """The *q* quantile of *samples* (nan when there are none)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


def p50_p99(samples: list[float]) -> tuple[float, float]:
    """Median and 99th percentile."""
    return quantile(samples, 0.5), quantile(samples, 0.99)


async def timed_calls(call: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    """Seconds each of *n* sequential awaits of ``call()`` took, after a warm-up."""
    for _ in range(min(200, n // 5)):
        await call()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    return samples

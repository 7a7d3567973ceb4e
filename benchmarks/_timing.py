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


async def timed_calls(call: Callable[[], Awaitable[Any]], n: int, warm_up: int | None = None) -> list[float]:
    """Seconds each of *n* sequential awaits of ``call()`` took, after *warm_up* untimed
    calls (by default ``min(200, n // 5)``)."""
    for _ in range(min(200, n // 5) if warm_up is None else warm_up):
        await call()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    return samples


async def throughput(calls: list[Callable[[], Awaitable[Any]]], in_flight: int, total: int) -> float:
    """Calls per second with *in_flight* trio tasks each making ``max(1, total // in_flight)``
    calls in a loop (task *i* uses ``calls[i % len(calls)]``, e.g. one per connection)."""
    import trio  # here, so the Ray driver's venv can import the rest without it

    per_task = max(1, total // in_flight)

    async def worker(call: Callable[[], Awaitable[Any]]) -> None:
        for _ in range(per_task):
            await call()

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(in_flight):
            nursery.start_soon(worker, calls[i % len(calls)])
    return per_task * in_flight / (time.perf_counter() - start)

"""What every driver process of ``peers.py`` shares (not a harness: `make bench` skips it).

A driver is a long-lived process that sets one system up once (a Ray actor, a tractor
sub-actor, a spear client, an echo server...) and then runs measurements on command,
so that ``peers.py`` can interleave the systems round after round without paying
their start-up again. It talks to ``peers.py`` in JSON lines: commands on stdin,
answers on stdout prefixed with :data:`MARKER` (anything else a library prints on
stdout is ignored).

Imports nothing from spear_actors and works with any trio from 0.22 on: the Ray and
tractor drivers run in their own virtualenv, with tractor's pinned trio.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from _timing import quantile, throughput, timed_calls

PAYLOAD = {"a": 1, "b": "x" * 32}
MARKER = "@@peers "
Handler = Callable[[dict[str, Any]], dict[str, Any]]
AsyncHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def latency(samples: list[float]) -> dict[str, float]:
    """The answer to a ``seq`` command: p50 and p99 in seconds."""
    return {"p50": quantile(samples, 0.5), "p99": quantile(samples, 0.99), "calls": len(samples)}


def warm_up_count(n: int) -> int:
    """Calls made before every timed sequence (not timed)."""
    return min(200, max(10, n // 5))


def emit(message: dict[str, Any]) -> None:
    """Send one answer to ``peers.py``."""
    sys.stdout.write(MARKER + json.dumps(message) + "\n")
    sys.stdout.flush()


def serve_sync(handle: Handler) -> None:
    """Answer commands from stdin until ``quit`` or end of input (blocking drivers)."""
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "quit":
            return
        emit(handle(command))


async def serve_async(handle: AsyncHandler) -> None:
    """The same for trio drivers: stdin is read in a thread, commands run in the loop."""
    import trio

    while True:
        line = await trio.to_thread.run_sync(sys.stdin.readline)
        if not line:
            return
        command = json.loads(line)
        if command["op"] == "quit":
            return
        emit(await handle(command))


async def timed_sequence(call: Callable[[], Awaitable[Any]], n: int) -> dict[str, float]:
    """p50/p99 of *n* sequential awaits of ``call()``, after a warm-up."""
    return latency(await timed_calls(call, n, warm_up=warm_up_count(n)))


async def in_flight_rate(calls: list[Callable[[], Awaitable[Any]]], in_flight: int, total: int) -> dict[str, float]:
    """Calls per second with *in_flight* trio tasks each calling in a loop (task *i* uses
    ``calls[i % len(calls)]``, e.g. one per connection)."""
    rate = await throughput(calls, in_flight, total)
    return {"rate": rate, "calls": max(1, total // in_flight) * in_flight}

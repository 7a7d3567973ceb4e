"""The hot-path cost of counting one invocation in the node's metrics.

    .venv/bin/python benchmarks/metrics_cost.py

Times ``NodeMetrics.invoked`` (the one update the node makes per call: a counter
and two histograms as plain counts), against an empty function call measured the
same way, and the byte counting of the gateway's metered transport (one body in, one
out). Target (issue 16): under 2 µs per call, both together.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spear_actors.gateway.metered import ByteCounts, MeteredTransport  # noqa: E402
from spear_actors.metrics import NodeMetrics  # noqa: E402


class _Sink:
    """The cheapest transport side: takes bodies, hands back a buffered one."""

    body = b"x" * 120

    def send_nowait(self, bodies: list[bytes]) -> bool:
        return True

    def receive_buffered(self) -> bytes | None:
        return self.body


def per_call(fn: object, n: int) -> float:
    """Median over 7 rounds of the seconds one call takes."""
    assert callable(fn)
    rounds = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        rounds.append((time.perf_counter() - start) / n)
    return sorted(rounds)[3]


def main() -> None:
    metrics = NodeMetrics()
    tasks = [f"task-{i}" for i in range(20)]
    for task in tasks:  # label children exist, as on a warm node
        metrics.invoked(task, "echo", "OK", 0.001, 0.4)
    n = 200_000

    def update() -> None:
        metrics.invoked("task-7", "echo", "OK", 0.0012, 0.41)

    def empty() -> None:
        pass

    base = per_call(empty, n)
    cost = per_call(update, n)
    print(f"empty call              {base * 1e6:6.2f} µs")
    print(f"NodeMetrics.invoked     {cost * 1e6:6.2f} µs  (target < 2 µs; {(cost - base) * 1e6:.2f} µs above the call)")
    sink = _Sink()
    metered = MeteredTransport(sink, ByteCounts())  # type: ignore[arg-type]
    bodies = [sink.body]
    plain_io = per_call(lambda: (sink.send_nowait(bodies), sink.receive_buffered()), n)
    metered_io = per_call(lambda: (metered.send_nowait(bodies), metered.receive_buffered()), n)
    print(
        f"byte counting, one body each way   {(metered_io - plain_io) * 1e6:6.2f} µs per call "
        f"(a unary call is one body in and one out at the gateway)"
    )


if __name__ == "__main__":
    main()

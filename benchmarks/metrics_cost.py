"""The hot-path cost of counting one invocation in the node's metrics.

    .venv/bin/python benchmarks/metrics_cost.py

Times ``NodeMetrics.invoked`` (the one update the node makes per call: a counter
and two histograms as plain counts), against an empty function call measured the
same way. Target (issue 16): under 2 µs per call.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spear_actors.metrics import NodeMetrics  # noqa: E402


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
    runtime_events()


def runtime_events() -> None:
    """The events recorded outside the per-call path (cold starts, failures, fetches)
    and the one inside it only when a call fails (a WASM trap): events() and an
    update, as the runtimes make them."""
    from spear_actors.metrics.events import RuntimeEvents, events, recording

    n = 100_000
    with recording(RuntimeEvents()):

        def trap() -> None:
            recorder = events()
            if recorder is not None:
                recorder.wasm_trapped("unreachable")

        def started() -> None:
            recorder = events()
            if recorder is not None:
                recorder.instance_started("process", "task-1", 0.02)

        print(f"WASM trap counted       {per_call(trap, n) * 1e6:6.2f} µs  (failed calls only)")
        print(f"cold start counted      {per_call(started, n) * 1e6:6.2f} µs  (once per instance)")
    print("bytes per listener      0 µs per call (read from TCP_INFO at close and at scrape)")


if __name__ == "__main__":
    main()

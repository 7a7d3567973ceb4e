"""The node's Prometheus metrics: one registry per node, updated on the hot path
through cached label children (a dict lookup and two cheap updates per call).

Labels stay low-cardinality: ``task`` and ``function`` come from clients, so after
:data:`MAX_LABEL_SETS` distinct pairs further ones are counted under ``"_other"``.
Gauges (queue depth, running executions, instances, connections) are read from the
node when scraped, costing the hot path nothing.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["MAX_LABEL_SETS", "NodeMetrics"]

MAX_LABEL_SETS: Final = 1000
"""Distinct (task, function) label pairs tracked before new ones become ``_other``."""
OTHER: Final = "_other"

_LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip


class _Histogram:
    """Plain counts of one label set: a sorted-bucket index per observation."""

    __slots__ = ("buckets", "count", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(_LATENCY_BUCKETS) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.buckets[bisect.bisect_left(_LATENCY_BUCKETS, value)] += 1
        self.count += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, n in zip((*map(str, _LATENCY_BUCKETS), "+Inf"), self.buckets, strict=True):
            running += n
            out.append((bound, float(running)))
        return out


class _Invocations:
    """Counts and latencies of one (task, function, code)."""

    __slots__ = ("calls", "execution", "latency")

    def __init__(self, latency: _Histogram, execution: _Histogram) -> None:
        self.calls = 0
        self.latency = latency
        self.execution = execution


class _InvocationCollector(Collector):
    """Exposes the hot path's plain counters through the registry at scrape time."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        calls = CounterMetricFamily(
            "spear_invocations", "Invocations by task, function and outcome code (OK, ACCEPTED or an error code).",
            labels=["task", "function", "code"],
        )  # fmt: skip
        for (task, function, code), slot in metrics._by_labels.items():
            calls.add_metric([task, function, code], slot.calls)
        yield calls
        for name, text, table in (
            ("spear_invocation_duration_seconds", "End-to-end time of SYNC and STREAM invocations in the node.",
             metrics._latency),
            ("spear_execution_duration_seconds", "Execution time measured by the instance (completed calls).",
             metrics._execution),
        ):  # fmt: skip
            family = HistogramMetricFamily(name, text, labels=["task"])
            for task, histogram in table.items():
                if histogram.count:
                    family.add_metric([task], histogram.cumulative(), histogram.total)
            yield family


class NodeMetrics:
    """Every metric of one node, in its own :attr:`registry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.admission_refusals = Counter(
            "spear_admission_refusals", "Calls refused at once (RESOURCE_EXHAUSTED) by admission control.",
            ["task"], registry=r,
        )  # fmt: skip
        self.connections_refused = Counter(
            "spear_connections_refused", "Client connections or hellos refused, by reason.", ["reason"], registry=r
        )
        self.client_connections = Gauge(
            "spear_client_connections", "Open client connections, by gateway listener.", ["listener"], registry=r
        )
        self.bytes_received = Counter(
            "spear_received_bytes", "Bytes received from clients (TCP payload), by gateway listener.",
            ["listener"], registry=r,
        )  # fmt: skip
        self.bytes_sent = Counter(
            "spear_sent_bytes", "Bytes sent to clients and acknowledged (TCP payload), by gateway listener.",
            ["listener"], registry=r,
        )  # fmt: skip
        self.tasks = Gauge("spear_tasks", "Tasks on the node.", registry=r)
        self.instances = Gauge("spear_instances", "Live instances, by task.", ["task"], registry=r)
        self.instances_by_state = Gauge(
            "spear_instances_by_state", "Live instances over all tasks, by state.", ["state"], registry=r
        )
        self.running = Gauge("spear_running_executions", "Executions running on an instance now.", registry=r)
        self.queued = Gauge("spear_queued_executions", "Executions waiting for an instance (queue depth).", registry=r)
        self.retained = Gauge("spear_retained_records", "Finished execution records kept for queries.", registry=r)
        self.up = Gauge("spear_up", "1 while the node serves, 0 while it drains.", registry=r)
        self._pairs: set[tuple[str, str]] = set()
        self._tasks: set[str] = set()
        self._by_key: dict[tuple[str, str, str], _Invocations] = {}
        self._by_labels: dict[tuple[str, str, str], _Invocations] = {}
        self._latency: dict[str, _Histogram] = {}
        self._execution: dict[str, _Histogram] = {}
        r.register(_InvocationCollector(self))

    def _pair(self, task: str, function: str) -> tuple[str, str]:
        pair = (task, function)
        if pair in self._pairs:
            return pair
        if len(self._pairs) >= MAX_LABEL_SETS:
            return (OTHER, OTHER)
        self._pairs.add(pair)
        self._tasks.add(task)
        return pair

    def invoked(self, task: str, function: str, code: str, seconds: float | None, execution_ms: float | None) -> None:
        """Count one finished invocation: its outcome *code* ("OK", "ACCEPTED" or an
        error code), end-to-end *seconds* and the instance's *execution_ms* (None:
        not measured). Hot path: plain counters, exposed at scrape time (under 2 µs,
        benchmarks/metrics_cost.py)."""
        key = (task, function, code)
        slot = self._by_key.get(key)
        if slot is None:
            slot = self._slot(key)
        slot.calls += 1
        if seconds is not None:
            slot.latency.observe(seconds)
        if execution_ms is not None:
            slot.execution.observe(execution_ms / 1000)

    def _slot(self, key: tuple[str, str, str]) -> _Invocations:
        label_task, label_function = self._pair(key[0], key[1])
        labels = (label_task, label_function, key[2])
        slot = self._by_labels.get(labels)
        if slot is None:
            latency = self._latency.setdefault(label_task, _Histogram())
            execution = self._execution.setdefault(label_task, _Histogram())
            slot = self._by_labels[labels] = _Invocations(latency, execution)
        if len(self._by_key) < 4 * MAX_LABEL_SETS:  # names past the cap take this slow path
            self._by_key[key] = slot
        return slot

    def task_label(self, task: str) -> str:
        """*task* as a label value (``_other`` past the cap)."""
        return task if task in self._tasks or len(self._pairs) < MAX_LABEL_SETS else OTHER

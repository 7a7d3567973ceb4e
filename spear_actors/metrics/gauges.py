"""Gauges and refusal counters refreshed when the node is scraped (not on the hot path)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import SpearError
from .registry import MAX_LABEL_SETS, NodeMetrics

if TYPE_CHECKING:
    from ..gateway import Gateway
    from ..node import Node

__all__ = ["ScrapeRefresher"]

_STATES = ("CREATING", "READY", "RUNNING")
"""The live instance states, always exported (0 when none)."""


class ScrapeRefresher:
    """Reads the node's health and stats (and the gateway's connections) into the
    gauges before each scrape."""

    def __init__(self, node: Node, gateway: Gateway | None) -> None:
        self.node = node
        self.gateway = gateway
        self._refusals_seen: dict[str, int] = {}
        self._bytes_seen: dict[tuple[str, str], int] = {}

    async def __call__(self) -> None:
        metrics: NodeMetrics = self.node.metrics
        health = await self.node.get_health()
        stats = await self.node.get_stats()
        metrics.up.set(1 if health["status"] == "SERVING" else 0)
        metrics.tasks.set(health["tasks"])
        metrics.running.set(health["running_executions"])
        metrics.queued.set(health["pending_executions"])
        metrics.retained.set(stats["node"]["retained_records"])
        metrics.instances.clear()
        states: dict[str, int] = dict.fromkeys(_STATES, 0)
        for task_id, task in list(stats["tasks"].items())[:MAX_LABEL_SETS]:
            metrics.instances.labels(task["task_name"]).set(task["instances"])
            if task["instances"]:
                try:
                    detail = await self.node.get_task(task_id)
                except SpearError:
                    continue  # deleted meanwhile
                for instance in detail["instances"]:
                    states[instance["status"]] = states.get(instance["status"], 0) + 1
        for state, count in states.items():
            metrics.instances_by_state.labels(state).set(count)
        if self.gateway is not None:
            for listener, count in self.gateway.connections_by_listener.items():
                metrics.client_connections.labels(listener).set(count)
            for listener, (received, sent) in self.gateway.byte_counts.totals().items():
                for way, counter, total in (
                    ("in", metrics.bytes_received, received),
                    ("out", metrics.bytes_sent, sent),
                ):
                    new_bytes = total - self._bytes_seen.get((way, listener), 0)
                    if new_bytes > 0:
                        counter.labels(listener).inc(new_bytes)
                        self._bytes_seen[(way, listener)] = total
            for reason, count in self.gateway.refusals.counts.items():
                new = count - self._refusals_seen.get(reason, 0)
                if new > 0:
                    metrics.connections_refused.labels(reason).inc(new)
                self._refusals_seen[reason] = count

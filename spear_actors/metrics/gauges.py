"""Gauges and refusal counters refreshed when the node is scraped (not on the hot path)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .registry import MAX_LABEL_SETS, NodeMetrics

if TYPE_CHECKING:
    from ..gateway import Gateway
    from ..node import Node

__all__ = ["ScrapeRefresher"]


class ScrapeRefresher:
    """Reads the node's health and stats (and the gateway's connections) into the
    gauges before each scrape."""

    def __init__(self, node: Node, gateway: Gateway | None) -> None:
        self.node = node
        self.gateway = gateway
        self._refusals_seen: dict[str, int] = {}

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
        for task in list(stats["tasks"].values())[:MAX_LABEL_SETS]:
            metrics.instances.labels(task["task_name"]).set(task["instances"])
        if self.gateway is not None:
            for listener, count in self.gateway.connections_by_listener.items():
                metrics.client_connections.labels(listener).set(count)
            for reason, count in self.gateway.refusals.counts.items():
                new = count - self._refusals_seen.get(reason, 0)
                if new > 0:
                    metrics.connections_refused.labels(reason).inc(new)
                self._refusals_seen[reason] = count

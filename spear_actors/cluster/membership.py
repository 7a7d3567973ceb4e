"""A node's membership of its cluster: registry, cluster view, peer pool and the
load it publishes, for as long as the node serves (started by ``open_node``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from .. import __version__
from ..errors import SpearError
from ..protocol.transports import Endpoint
from .config import ClusterConfig
from .peers import open_peer_pool
from .records import NodeInfo
from .registry import open_registry
from .routing import ClusterRouter
from .view import ClusterView

if TYPE_CHECKING:
    from ..node import Node

__all__ = ["serve_cluster"]

log = logging.getLogger(__name__)


async def serve_cluster(
    node: Node, config: ClusterConfig, endpoints: list[Endpoint], *, task_status: trio.TaskStatus[ClusterRouter]
) -> None:
    """Join the cluster as *node* (reachable at *endpoints*) until cancelled, then
    leave it (lease revoked, claims gone at once). ``task_status`` gets the router
    once the first registration was attempted (etcd may be down: the node serves
    its own tasks and joins when etcd comes)."""
    info = NodeInfo(
        node_id=node.config.node_id,
        endpoints=tuple(str(endpoint) for endpoint in endpoints),
        version=__version__,
        capacity=node.config.max_running_executions,
        started_at=time.time(),
    )
    token = config.token or node.config.token
    async with (
        open_registry(config, info) as registry,
        open_peer_pool(info.node_id, token, connect_timeout=config.request_timeout_s) as peers,
        trio.open_nursery() as nursery,
    ):
        view = ClusterView(registry)
        await nursery.start(view.run)
        nursery.start_soon(_publish_load, node, registry.set_load, max(0.2, config.load_publish_interval_s))
        log.info("node %s in cluster %s (state %s)", info.node_id, config.prefix, registry.state.value)
        task_status.started(ClusterRouter(node, registry, view, peers))
        await trio.sleep_forever()


async def _publish_load(node: Node, set_load: Callable[[int], None], interval: float) -> None:
    """Keep the node's published load (pending + running executions) current."""
    while True:
        try:
            health = await node.get_health()
        except SpearError:
            pass
        else:
            set_load(int(health.get("running_executions", 0)) + int(health.get("pending_executions", 0)))
        await trio.sleep(interval)

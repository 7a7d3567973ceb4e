"""A node's membership of its cluster: registry, cluster view, peer pool and the
load it publishes, for as long as the node serves (started by ``open_node``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from .. import __version__
from ..api.table import MAX_LIST_LIMIT
from ..errors import SpearError
from ..protocol.transports import Endpoint
from .config import ClusterConfig
from .peers import open_peer_pool
from .records import ClusterState, NodeInfo
from .registry import ClusterRegistry, open_registry
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
        nursery.start_soon(_claim_local_tasks, node, registry)
        log.info("node %s in cluster %s (state %s)", info.node_id, config.prefix, registry.state.value)
        task_status.started(ClusterRouter(node, registry, view, peers))
        await trio.sleep_forever()


async def _claim_local_tasks(node: Node, registry: ClusterRegistry) -> None:
    """Once registered, claim the tasks this node had before joining (declared in its
    config, restored from its store) under their ids, so calls by name from other
    nodes come here. A name another node holds stays local to this node (logged)."""
    await registry.wait_state(ClusterState.CONNECTED)
    start_after = ""
    while True:
        page = await node.list_tasks(limit=MAX_LIST_LIMIT, start_after=start_after)
        for task in page["tasks"]:
            name, task_id = str(task["task_name"]), str(task["task_id"])
            if registry.owned_task(name) is not None:
                continue
            try:
                claim = await registry.claim_task(name, task_id)
            except SpearError as exc:
                log.warning("node %s: cannot claim its task %r: %s", node.config.node_id, name, exc)
                continue
            if not claim.won:
                log.warning(
                    "node %s: task %r is held by node %s: this node's copy serves calls made to it only",
                    node.config.node_id,
                    name,
                    claim.entry.owner,
                )
        start_after = str(page.get("next_start_after") or "")
        if not start_after:
            return


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

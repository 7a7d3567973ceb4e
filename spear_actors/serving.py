"""``open_node``: a node and its network front ends, for the duration of a block.

Embed it in any trio program::

    async with spear_actors.open_node(NodeConfig(listen=["ws://127.0.0.1:7411"])) as node:
        ...

:mod:`spear_actors.node` is the actor tree (:func:`~spear_actors.node.open_core`);
this module adds the gateway for ``NodeConfig.listen`` (and the metrics listener for
``NodeConfig.metrics_listen``), so the node never knows its front ends.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ._nursery import background_nursery
from .cluster.membership import serve_cluster
from .config import NodeConfig
from .errors import ErrorCode, SpearError
from .gateway import Gateway
from .gateway.exposure import check_exposure
from .metrics import serve_metrics
from .metrics.events import RuntimeEvents, recording
from .metrics.gauges import ScrapeRefresher
from .node import Node, open_core

__all__ = ["open_node"]

log = logging.getLogger(__name__)


@asynccontextmanager
async def open_node(config: NodeConfig | None = None) -> AsyncIterator[Node]:
    """Run a node, with a gateway on each ``config.listen`` URL, for the block.

    ``node.endpoints`` has the bound endpoints (real ports for port 0), and
    ``node.metrics_url`` the metrics URL when ``metrics_listen`` is set. On exit the
    gateway closes its listeners and connections, calls still in flight end
    (UNAVAILABLE), every instance is stopped (agent processes terminated and reaped)
    and no task of the node is left running. :meth:`Node.drain` first, for a
    graceful end.
    """
    config = config or NodeConfig()
    check_exposure(config)
    if config.cluster is not None and not config.listen:
        raise SpearError(ErrorCode.INVALID_ARGUMENT, "config: a cluster node needs a listen endpoint (peers dial it)")
    runtime_events = RuntimeEvents() if config.metrics_listen else None
    with recording(runtime_events):  # for the runtimes, artifacts and gateway of this node
        async with _open_node(config, runtime_events) as node:
            yield node


@asynccontextmanager
async def _open_node(config: NodeConfig, runtime_events: RuntimeEvents | None) -> AsyncIterator[Node]:
    async with open_core(config) as node, background_nursery() as nursery:
        if runtime_events is not None:
            runtime_events.register(node.metrics.registry)
        gateway: Gateway | None = None
        if config.listen:
            gateway = Gateway(node)
            node.endpoints.extend(await nursery.start(gateway.run, list(config.listen)))
            node.front_ends.append(gateway)
            if config.cluster is not None:
                gateway.router = await nursery.start(serve_cluster, node, config.cluster, gateway.endpoints)
        if config.metrics_listen:
            node.metrics_url = await nursery.start(
                serve_metrics, config.metrics_listen, node.metrics.registry, ScrapeRefresher(node, gateway)
            )
            log.info("node %s serves metrics on %s", config.node_id, node.metrics_url)
        yield node

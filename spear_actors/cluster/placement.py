"""Where a new task goes: the node asked, unless it is full, then the least-loaded node."""

from __future__ import annotations

from collections.abc import Iterable

from .records import NodeInfo

__all__ = ["place_task"]


def place_task(local: NodeInfo, nodes: Iterable[NodeInfo]) -> NodeInfo:
    """The node that should create a new task asked of *local*.

    *local* itself while its load is below its capacity (no hop, no transfer); else the
    live node with the lowest load / capacity among *nodes* (ties: the lower node id,
    so every node choosing at once picks the same one); *local* if no node has room.
    """
    if local.load < local.capacity:
        return local
    candidates = [node for node in nodes if node.load < node.capacity]
    if not candidates:
        return local
    return min(candidates, key=lambda node: (node.utilisation, node.node_id))

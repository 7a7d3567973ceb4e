"""Many nodes, one registry: cluster membership and task ownership on etcd.

Optional: a node without a :class:`ClusterConfig` runs alone. See docs/cluster.md.
"""

from __future__ import annotations

from .config import ClusterConfig
from .etcd import EtcdClient
from .events import EventStream
from .ids import execution_owner, id_owner, new_execution_id, new_task_id, validate_node_id
from .placement import place_task
from .records import ClusterSnapshot, ClusterState, ClusterStatus, NodeEvent, NodeInfo, TaskClaim, TaskEntry, TaskEvent
from .registry import ClusterRegistry, open_registry
from .view import ClusterView

__all__ = [
    "ClusterConfig",
    "ClusterRegistry",
    "ClusterSnapshot",
    "ClusterState",
    "ClusterStatus",
    "ClusterView",
    "EtcdClient",
    "EventStream",
    "NodeEvent",
    "NodeInfo",
    "TaskClaim",
    "TaskEntry",
    "TaskEvent",
    "execution_owner",
    "id_owner",
    "new_execution_id",
    "new_task_id",
    "open_registry",
    "place_task",
    "validate_node_id",
]

"""Identifiers that name their owner node, so a call can be routed without a lookup.

An execution id made by a cluster node is ``<node_id>:exec-<32 hex>``, a task id
``<node_id>:task-<12 hex>``; the part before the first ``:`` is the node that made
it. For an execution that is its owner for life. For a task it is the owner as long as
the task lives: when that node is gone, the task is gone with it (a new owner creates
it again under a new id), so a call for the old id can say which node was lost. An id
without a valid node part (a client-chosen id, an id from a node outside any cluster)
names no node: a cluster node serves it if it holds it, else asks its peers (:mod:`.routing`).
"""

from __future__ import annotations

import re
import uuid

from ..errors import ErrorCode, SpearError

__all__ = ["NODE_ID_PATTERN", "execution_owner", "id_owner", "new_execution_id", "new_task_id", "validate_node_id"]

NODE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
"""What a node id may be: 1-63 letters, digits, ``_ . -``, starting with a letter or digit
(so it is safe in an etcd key, a URL path and an execution id, and never holds ``:``)."""

SEPARATOR = ":"


def validate_node_id(node_id: str) -> str:
    """The node id itself, or INVALID_ARGUMENT."""
    if not isinstance(node_id, str) or NODE_ID_PATTERN.fullmatch(node_id) is None:
        raise SpearError(
            ErrorCode.INVALID_ARGUMENT,
            f"node id {str(node_id)[:80]!r} must be 1-63 of [A-Za-z0-9_.-], starting with a letter or digit",
        )
    return node_id


def new_execution_id(node_id: str) -> str:
    """A fresh execution id owned by *node_id*."""
    return f"{validate_node_id(node_id)}{SEPARATOR}exec-{uuid.uuid4().hex}"


def new_task_id(node_id: str) -> str:
    """A fresh task id made by *node_id*."""
    return f"{validate_node_id(node_id)}{SEPARATOR}task-{uuid.uuid4().hex[:12]}"


def id_owner(identifier: str) -> str | None:
    """The node named by an execution or task id, or None when the id names no node."""
    node_id, separator, rest = identifier.partition(SEPARATOR)
    if not separator or not rest or NODE_ID_PATTERN.fullmatch(node_id) is None:
        return None
    return node_id


def execution_owner(execution_id: str) -> str | None:
    """The node that owns *execution_id*, or None when the id names no node."""
    return id_owner(execution_id)

"""Identifiers that name their owner node, so a call can be routed without a lookup.

An execution id made by a cluster node is ``<node_id>:exec-<32 hex>``; the part before
the first ``:`` is the node that owns the execution. An id without a valid node part
(a client-chosen id, an id from a node outside any cluster) has no owner by name and is
looked up locally.
"""

from __future__ import annotations

import re
import uuid

from ..errors import ErrorCode, SpearError

__all__ = ["NODE_ID_PATTERN", "execution_owner", "new_execution_id", "validate_node_id"]

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


def execution_owner(execution_id: str) -> str | None:
    """The node that owns *execution_id*, or None when the id names no node."""
    node_id, separator, rest = execution_id.partition(SEPARATOR)
    if not separator or not rest or NODE_ID_PATTERN.fullmatch(node_id) is None:
        return None
    return node_id

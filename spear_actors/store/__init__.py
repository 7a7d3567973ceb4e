"""Where execution records, idempotency keys, client-created tasks and the node's
identity are kept: in memory, or in SQLite under the data dir (see
docs/execution-modes.md, "Durability")."""

from __future__ import annotations

from .base import (
    NODE_RESTARTED,
    ExecutionRow,
    ExecutionStore,
    RecoveredState,
    StoredTask,
    node_restarted_error,
    pack,
    unpack,
)
from .memory import MemoryStore
from .sqlite import SqliteStore
from .writer import Retention

__all__ = [
    "NODE_RESTARTED",
    "ExecutionRow",
    "ExecutionStore",
    "MemoryStore",
    "RecoveredState",
    "Retention",
    "SqliteStore",
    "StoredTask",
    "node_restarted_error",
    "pack",
    "unpack",
]

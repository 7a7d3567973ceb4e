"""The in-memory store (``store = "memory"``): nothing outlives the process.

The registry's memory retention is then the only retention, and idempotency lasts
as long as a record is in memory.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from .base import ExecutionRow, ExecutionStore, RecoveredState, StoredTask

__all__ = ["MemoryStore"]


class MemoryStore(ExecutionStore):
    """Keeps nothing beyond the registry: writes are acknowledged at once."""

    persistent = False

    def __init__(self) -> None:
        self._seq = itertools.count(1)

    async def open(self, node_id: str, recent: int) -> RecoveredState:
        return RecoveredState(node_id)

    async def aclose(self) -> None:
        return None

    def save(self, row: ExecutionRow, urgent: bool = False) -> int:
        return next(self._seq)

    async def committed(self, seq: int) -> None:
        return None

    @property
    def durable_seq(self) -> float:
        return math.inf

    def backlogged(self) -> bool:
        return False

    async def load(self, execution_id: str) -> ExecutionRow | None:
        return None

    async def load_many(self, execution_ids: Sequence[str]) -> dict[str, ExecutionRow]:
        return {}

    def save_task(self, task: StoredTask) -> None:
        return None

    def delete_task(self, task_id: str) -> None:
        return None

"""The execution store's interface and the shapes that cross it.

The manager's execution registry (``actors/executions.py``) keeps live records and
recent finished ones in memory; a store is where records, idempotency keys,
client-created tasks and the node's identity are kept beyond that — in memory
only (:class:`~.memory.MemoryStore`) or on disk (:class:`~.sqlite.SqliteStore`).

Writes never block the trio loop: they are queued and answered with a sequence
number; :meth:`ExecutionStore.committed` waits until a write is durable. Reads of
finished records that left memory go to a thread.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import Any

import msgpack

from ..errors import ErrorCode, SpearError

__all__ = [
    "NODE_RESTARTED",
    "ExecutionRow",
    "ExecutionStore",
    "RecoveredState",
    "StoredTask",
    "node_restarted_error",
    "pack",
    "unpack",
]

NODE_RESTARTED = "node_restarted"
"""``error.details.reason`` of an execution that was PENDING or RUNNING when the node
died: after the restart it is FAILED with code UNAVAILABLE and this reason."""


def node_restarted_error() -> SpearError:
    """The error recorded for executions cut short by the node's death."""
    return SpearError(
        ErrorCode.UNAVAILABLE,
        "the node restarted before the execution finished",
        {"reason": NODE_RESTARTED},
    )


def pack(value: Any) -> bytes:
    """msgpack bytes of *value* (the encoding of results, logs and errors on disk)."""
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(blob: bytes | None) -> Any:
    """The value :func:`pack` made *blob* from (None for None)."""
    if blob is None:
        return None
    return msgpack.unpackb(blob, raw=False, strict_map_key=False)


@dataclasses.dataclass(slots=True)
class ExecutionRow:
    """One execution record as the store keeps it (results, logs and the error
    already encoded with :func:`pack`)."""

    execution_id: str
    task_id: str
    function_name: str
    mode: str
    status: str
    instance_id: str = ""
    created_at: float = 0.0
    started_at: float | None = None
    completed_at: float | None = None
    execution_time_ms: float | None = None
    error: bytes | None = None
    result: bytes | None = None
    result_dropped_bytes: int | None = None
    """Size of a result too large to retain (its bytes are not kept)."""
    logs: bytes | None = None
    request: bytes | None = None
    """For an unfinished ASYNC call that asked for retries: what to run again if the
    node dies first (:func:`pack` of the map :func:`unpack` gives back)."""

    @property
    def size(self) -> int:
        """Bytes this row costs on disk, roughly (what the byte retention counts)."""
        return 200 + len(self.result or b"") + len(self.logs or b"") + len(self.error or b"") + len(self.request or b"")

    def to_dict(self, include_result: bool = True, include_logs: bool = False) -> dict[str, Any]:
        """The record as a map (the shape of get_execution's answer)."""
        out: dict[str, Any] = {
            "execution_id": self.execution_id,
            "task_id": self.task_id,
            "instance_id": self.instance_id,
            "function_name": self.function_name,
            "mode": self.mode,
            "status": self.status,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "execution_time_ms": self.execution_time_ms,
            "error": unpack(self.error),
        }
        if include_result:
            out["result"] = unpack(self.result)
            if self.result_dropped_bytes is not None:
                out["result_dropped"] = {"size_bytes": self.result_dropped_bytes}
        if include_logs:
            out["logs"] = unpack(self.logs) or []
        return out

    def error_value(self) -> SpearError | None:
        """The recorded error as a :class:`SpearError` (None if it completed)."""
        error = unpack(self.error)
        if not isinstance(error, dict):
            return None
        try:
            code = ErrorCode(str(error.get("code")))
        except ValueError:
            code = ErrorCode.INTERNAL
        return SpearError(code, str(error.get("message", "")), dict(error.get("details") or {}))


@dataclasses.dataclass(slots=True)
class StoredTask:
    """A client-created task as persisted: enough to create it again after a restart."""

    task_id: str
    task_name: str
    description: str
    artifact: dict[str, Any]
    """The ArtifactSpec map (with inline ``content`` bytes if it had any)."""
    artifact_digest: str
    """The sha256 the task was pinned to; the restored task must resolve to it."""
    policy: dict[str, Any]
    created_at: float


@dataclasses.dataclass(slots=True)
class RecoveredState:
    """What a store found when it opened."""

    node_id: str
    tasks: list[StoredTask] = dataclasses.field(default_factory=list)
    recent: list[ExecutionRow] = dataclasses.field(default_factory=list)
    """The most recent finished records (oldest first), to serve listings from memory."""
    aborted: int = 0
    """Records found PENDING or RUNNING, now FAILED with :data:`NODE_RESTARTED`."""
    resubmit: list[ExecutionRow] = dataclasses.field(default_factory=list)
    """Records found PENDING or RUNNING whose call asked for retries: still PENDING on
    disk, to be run again (their ``request``)."""


class ExecutionStore(abc.ABC):
    """Where execution records, idempotency keys, tasks and the node's identity live."""

    persistent: bool = False
    """True if what is written survives the process (reads may then find records
    that are no longer in memory)."""

    @abc.abstractmethod
    async def open(self, node_id: str, recent: int) -> RecoveredState:
        """Open the store (in a thread if it touches disk); *node_id* is kept as the
        node's identity unless one is stored (an explicit config id wins: see node.py).
        Returns up to *recent* finished records for the memory registry."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Write everything queued, then close. Safe to call twice."""

    @abc.abstractmethod
    def save(self, row: ExecutionRow, urgent: bool = False) -> int:
        """Queue an insert-or-replace of *row*; returns its write sequence number.
        Never blocks. *urgent*: a caller will wait for it (:meth:`committed`), so it
        is not held back to gather a larger batch."""

    @abc.abstractmethod
    async def committed(self, seq: int) -> None:
        """Return once write *seq* is durable (at once for a memory store).
        Raises UNAVAILABLE if the store failed."""

    @property
    @abc.abstractmethod
    def durable_seq(self) -> int | float:
        """The write sequence number up to which everything is durable: a record whose
        last write is past it must stay in memory (the disk does not have it yet)."""

    @abc.abstractmethod
    def backlogged(self) -> bool:
        """True while the write queue is over its limit: new calls must be refused."""

    @abc.abstractmethod
    async def load(self, execution_id: str) -> ExecutionRow | None:
        """The stored record of *execution_id* (None if unknown or pruned)."""

    async def load_many(self, execution_ids: Sequence[str]) -> dict[str, ExecutionRow]:
        """The stored records of *execution_ids* by id (unknown or pruned ids are
        absent), read together: one read for many ids where the store can."""
        found: dict[str, ExecutionRow] = {}
        for execution_id in execution_ids:
            row = await self.load(execution_id)
            if row is not None:
                found[execution_id] = row
        return found

    @abc.abstractmethod
    def save_task(self, task: StoredTask) -> None:
        """Queue storing a client-created task."""

    @abc.abstractmethod
    def delete_task(self, task_id: str) -> None:
        """Queue forgetting a task (deleted or replaced)."""

    def stats(self) -> dict[str, Any]:
        """Figures for get_stats: rows and bytes retained, queue depth, commits."""
        return {}

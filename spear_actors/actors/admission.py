"""Which tasks refuse calls right now, readable by the node's front door.

Like :class:`~.budget.InstanceBudget` this is a synchronization primitive, not actor
state: the manager is its only writer (it learns from each task when its queue
fills and empties); the node reads it before sending a call into the actor tree,
so that under overload a refusal costs no hop at all.
"""

from __future__ import annotations

from ..errors import ErrorCode, SpearError
from ..model import InvocationType, InvokeRequest

__all__ = ["AdmissionGate", "queue_full_error"]

QUEUE_FULL_RETRY_MS = 100
"""The retry hint of a refusal for a full queue: a fixed guess, not a measurement."""


def queue_full_error(task_name: str, max_pending: int | None = None) -> SpearError:
    """The refusal of a call to a task whose queue holds ``max_pending`` calls."""
    waiting = f"{max_pending} calls already waiting" if max_pending is not None else "its queue is full"
    return SpearError(
        ErrorCode.RESOURCE_EXHAUSTED,
        f"task {task_name}: {waiting} (max_pending)",
        {"retry_after_ms": QUEUE_FULL_RETRY_MS},
    )


class AdmissionGate:
    """The set of tasks whose queue is full (by id and by name)."""

    __slots__ = ("_by_id", "_by_name")

    def __init__(self) -> None:
        self._by_id: dict[str, str] = {}
        self._by_name: dict[str, str] = {}

    def mark(self, task_id: str, task_name: str, full: bool) -> None:
        """Record that a task's queue filled up (or has room again)."""
        if full:
            self._by_id[task_id] = task_name
            self._by_name[task_name] = task_id
        else:
            self._by_id.pop(task_id, None)
            if self._by_name.get(task_name) == task_id:
                del self._by_name[task_name]

    def is_full(self, task_id: str) -> bool:
        """True while the task refuses new calls."""
        return task_id in self._by_id

    def refusal(self, request: InvokeRequest) -> SpearError | None:
        """The RESOURCE_EXHAUSTED answer for *request*, if its task is full."""
        if request.invocation_type is InvocationType.NEW_TASK:
            name = request.task_name if request.task_name in self._by_name else None
        else:
            name = self._by_id.get(request.task_id)
        if name is None or request.context.execution_id:
            return None  # (a repeated execution id is answered from its record instead)
        return queue_full_error(name)

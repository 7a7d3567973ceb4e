"""The messages actors exchange. Each carries only what the receiver needs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ..errors import SpearError
from ..model import InvokeRequest
from ..runtimes.base import Call, StreamSink
from .mailbox import Reply

__all__ = [
    "AttemptDone",
    "CancelExecution",
    "DeclareTask",
    "DeleteTask",
    "Drain",
    "Execute",
    "ExecutionDone",
    "ExecutionFinished",
    "ExecutionsStarted",
    "GetTaskInfo",
    "InstanceExited",
    "InstanceMessage",
    "InstanceReady",
    "Invoke",
    "ManagerMessage",
    "Outcome",
    "OutcomeSlot",
    "Query",
    "Routed",
    "StopInstance",
    "StopTask",
    "StoredLookup",
    "Submit",
    "TaskCreated",
    "TaskInstances",
    "TaskMessage",
    "TaskQueueFull",
    "TaskStopped",
    "WaitExecution",
    "WaitExecutions",
]


@dataclasses.dataclass(slots=True)
class Outcome:
    """A finished execution, as the instance reports it."""

    result: Any
    instance_id: str
    execution_time_ms: float
    logs: list[str]


class OutcomeSlot(Reply[Outcome]):
    """The reply slot of an execution's outcome, marked with where and when the
    execution started: the task actor writes the marks when it hands the call to an
    instance, and the manager reads them with the outcome (:class:`ExecutionDone`),
    so a call that ends quickly needs no notification of its start of its own
    (a longer one is reported by :class:`ExecutionsStarted`)."""

    __slots__ = ("instance_id", "on_outcome", "started_at")

    def __init__(self) -> None:
        super().__init__()
        self.instance_id = ""
        """The instance running it (the last one, if it was run again elsewhere)."""
        self.started_at: float | None = None
        """Wall-clock time it first left the queue for an instance (None: it never did)."""
        self.on_outcome: Callable[[OutcomeSlot], None] | None = None
        """The caller's own callback, called once after ``on_done`` (which the manager
        takes): a caller that has no task waiting learns of the outcome here."""

    def _answered(self) -> None:
        super()._answered()
        on_outcome = self.on_outcome
        if on_outcome is not None:
            self.on_outcome = None  # one-shot, and no cycle left (see Reply._answered)
            on_outcome(self)


@dataclasses.dataclass(slots=True)
class Routed:
    """The manager's answer to :class:`Invoke`: where the call went, and the reply
    slot its outcome will arrive in (by ``deadline``, trio time)."""

    task_id: str
    execution_id: str
    deadline: float
    outcome: Reply[Outcome]
    status: str = "PENDING"
    """The execution's status when routed (not PENDING for a duplicate execution_id)."""
    estimated_completion_ms: float | None = None
    """The task's recent median execution time, if it has one."""
    write_seq: int = 0
    """The store's write of the new record: an ASYNC call is acknowledged once it is
    durable (0: nothing to wait for)."""


# -- node → manager -----------------------------------------------------------
@dataclasses.dataclass(slots=True)
class Invoke:
    """Route an InvokeFunction request to its task (creating the task if asked)."""

    request: InvokeRequest
    reply: Reply[Routed]
    sink: StreamSink | None = None
    outcome: OutcomeSlot | None = None
    """The caller's own slot for the outcome (SYNC and STREAM): the manager routes
    the execution's result into it, so the caller waits once, on the outcome, and is
    not woken for :class:`Routed` first. None: the manager makes one."""


@dataclasses.dataclass(slots=True)
class DeclareTask:
    """Create a task (if no task has its name) without invoking it; reply: task id."""

    seed: Any
    reply: Reply[str]


@dataclasses.dataclass(slots=True)
class TaskCreated:
    """The manager's own note that a task it was creating is ready (or failed)."""

    key: str
    definition: Any
    error: SpearError | None = None


@dataclasses.dataclass(slots=True)
class StoredLookup:
    """The manager's own note: the store's answers about execution ids that were not
    in memory, by id (a row, None: unknown, or the store's error), from one batched
    read."""

    rows: dict[str, Any]


@dataclasses.dataclass(slots=True)
class Query:
    """A read-only question for the manager: *method* is a FunctionService method
    (get_execution, list_tasks, get_task, list_executions, get_health, get_stats)."""

    method: str
    params: dict[str, Any]
    reply: Reply[Any]


@dataclasses.dataclass(slots=True)
class WaitExecution:
    """Answer *reply* with the execution's outcome when it finishes."""

    execution_id: str
    reply: Reply[Outcome]


@dataclasses.dataclass(slots=True)
class WaitExecutions:
    """Several :class:`WaitExecution` in one message (a watch's ids, a slice at a
    time): the ids not in memory are then read from the store together."""

    waits: list[WaitExecution]


@dataclasses.dataclass(slots=True)
class DeleteTask:
    """Delete a task; busy and not forced is FAILED_PRECONDITION."""

    task_id: str
    force: bool
    reply: Reply[dict[str, Any]]


@dataclasses.dataclass(slots=True)
class Drain:
    """Refuse new calls with *reason*; answer *reply* once no execution is unfinished."""

    reason: str
    reply: Reply[None]


@dataclasses.dataclass(slots=True)
class ExecutionDone:
    """The manager's note that an execution's outcome slot was answered (with the
    slot's marks of where and when it started, if it did)."""

    execution_id: str
    outcome: OutcomeSlot


@dataclasses.dataclass(slots=True)
class TaskStopped:
    """The manager's note that a task actor has ended."""

    task_id: str


# -- task → manager -----------------------------------------------------------------
@dataclasses.dataclass(slots=True)
class ExecutionsStarted:
    """Executions that left the queue for an instance a while ago (the task's
    ``STARTED_REPORT_AFTER``) and are still running: (execution id, instance id,
    wall-clock start). One that ends sooner is never in one: its start comes with
    its outcome (:class:`OutcomeSlot`)."""

    started: list[tuple[str, str, float]]


@dataclasses.dataclass(slots=True)
class TaskInstances:
    """A task's instance count or status changed."""

    task_id: str
    instances: int
    status: str = "ACTIVE"


@dataclasses.dataclass(slots=True)
class TaskQueueFull:
    """A task's queue became full (or had room again): while full, the manager
    refuses its calls itself, without the hop to the task."""

    task_id: str
    full: bool


# -- manager → task -------------------------------------------------------------
@dataclasses.dataclass(slots=True)
class Submit:
    """Run *call* on one of the task's instances before *deadline* (trio time)."""

    call: Call
    reply: OutcomeSlot
    deadline: float
    sink: StreamSink | None = None
    force_new_instance: bool = False
    retries: int = 0
    """Runs left on another instance if the instance running it fails (max_retries)."""


@dataclasses.dataclass(slots=True)
class CancelExecution:
    """Cancel an execution wherever it is (pending or running). With *force*, the
    instance running it is killed and replaced rather than asked."""

    execution_id: str
    reason: str = "cancelled"
    force: bool = False
    reply: Reply[dict[str, Any]] | None = None
    """The manager answers it with the execution record (after the cancel was sent)."""


@dataclasses.dataclass(slots=True)
class GetTaskInfo:
    """Ask a task for its description, policy and instances."""

    reply: Reply[dict[str, Any]]


@dataclasses.dataclass(slots=True)
class AttemptDone:
    """The task's own note: one attempt of a retryable call ended (*outcome*)."""

    submit: Submit
    outcome: Reply[Outcome]


@dataclasses.dataclass(slots=True)
class StopTask:
    """Stop the task: pending calls fail with *reason*, instances are stopped and
    their in-flight calls fail with *reason* too. With *drain*, calls already
    accepted finish first and only new ones are refused."""

    reason: SpearError
    drain: bool = False


@dataclasses.dataclass(slots=True)
class StopInstance:
    """Stop the instance; in-flight calls fail with *reason*."""

    reason: SpearError


# -- task → instance ------------------------------------------------------------
@dataclasses.dataclass(slots=True)
class Execute:
    """Run *call* on this instance."""

    call: Call
    reply: Reply[Outcome]
    sink: StreamSink | None = None


# -- instance → task --------------------------------------------------------------
@dataclasses.dataclass(slots=True)
class InstanceReady:
    """The instance started and can take calls."""

    instance_id: str


@dataclasses.dataclass(slots=True)
class InstanceExited:
    """The instance is gone: failed to start, died, or was stopped (reason None)."""

    instance_id: str
    reason: SpearError | None
    ready: bool
    """Whether it had become READY before it exited."""
    unstarted: list[Execute] = dataclasses.field(default_factory=list)
    """Calls dispatched to it that never started: the task runs them elsewhere."""


@dataclasses.dataclass(slots=True)
class ExecutionFinished:
    """The instance has a free slot again: *execute* has ended there."""

    instance_id: str
    execution_id: str
    execute: Execute
    """The message that ended (a retried call is dispatched again under the same
    execution id: the task tells the attempts apart by this object)."""


TaskMessage = (
    Submit | CancelExecution | GetTaskInfo | StopTask | InstanceReady | InstanceExited | ExecutionFinished | AttemptDone
)
InstanceMessage = Execute | CancelExecution | StopInstance
ManagerMessage = (
    Invoke
    | DeclareTask
    | TaskCreated
    | CancelExecution
    | Query
    | WaitExecution
    | WaitExecutions
    | DeleteTask
    | ExecutionDone
    | TaskStopped
    | ExecutionsStarted
    | TaskInstances
    | TaskQueueFull
    | Drain
    | StoredLookup
)

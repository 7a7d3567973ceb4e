"""TaskActor: one per task; owns its instance pool, queues calls, scales, reaps."""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import logging
import math
import time
import uuid
from typing import Any

import trio

from ..errors import ErrorCode, SpearError
from ..model import ArtifactSpec, InstancePolicy, InstanceStatus, TaskStatus
from ..runtimes.base import Call, InstanceSpec, Runtime
from .admission import queue_full_error
from .budget import InstanceBudget
from .instance import InstanceActor
from .mailbox import Actor, ActorRef, Reply
from .messages import (
    AttemptDone,
    CancelExecution,
    Execute,
    ExecutionFinished,
    ExecutionsStarted,
    GetTaskInfo,
    InstanceExited,
    InstanceMessage,
    InstanceReady,
    ManagerMessage,
    Outcome,
    StopInstance,
    StopTask,
    Submit,
    TaskInstances,
    TaskMessage,
    TaskQueueFull,
)

__all__ = ["TaskActor", "TaskDefinition"]

log = logging.getLogger(__name__)

DEGRADED_AFTER = 3
"""Failed starts in a row after which a task is DEGRADED and fails calls fast (starts
killed from outside by SIGKILL or SIGTERM excepted: they say nothing about the artifact)."""

_KILLED_FROM_OUTSIDE = (-9, -15)
"""Exit codes of an agent killed by SIGKILL or SIGTERM (it did not exit by itself)."""

STARTED_REPORT_AFTER = 0.005
"""Seconds after its start (up to twice that) an execution still running is
reported to the manager (record → RUNNING), in one :class:`ExecutionsStarted` with
the others due. A call that ends sooner costs no notification of its start: the
manager reads it from the outcome slot's marks (see docs/architecture.md)."""


@dataclasses.dataclass(slots=True)
class TaskDefinition:
    """What a task is: identity, artifact (resolved) and a fully resolved policy."""

    task_id: str
    task_name: str
    description: str
    artifact: ArtifactSpec
    artifact_path: Any
    artifact_digest: str
    policy: InstancePolicy
    created_at: float = dataclasses.field(default_factory=time.time)
    origin_policy: InstancePolicy | None = None
    """For a client-created task, the policy its request gave (what the store keeps
    so the task exists again after a restart); None for a task of the node's config."""

    def describe(self, status: TaskStatus) -> dict[str, Any]:
        """The task's identity fields as a status map (shared by list and get views)."""
        return {
            "task_id": self.task_id,
            "task_name": self.task_name,
            "description": self.description,
            "status": status.value,
            "created_at": self.created_at,
            "artifact": self.artifact.to_dict(),
        }


@dataclasses.dataclass(slots=True, eq=False)
class _Slot:
    """The task's view of one of its instances."""

    instance_id: str
    ref: ActorRef[InstanceMessage]
    work: ActorRef[Execute]
    scope: trio.CancelScope
    ready: bool = False
    inflight: int = 0
    last_used: float = 0.0
    executions: int = 0


@dataclasses.dataclass(slots=True, eq=False)
class _Pending:
    submit: Submit
    target: str | None = None
    """An instance started for this call alone (force_new_instance)."""


class TaskActor(Actor[TaskMessage]):
    """Schedules a task's calls on its instances.

    A call waits in arrival order until an instance has a free slot (least loaded
    first), while new instances start up to ``max_instances``. Instances idle past
    ``idle_timeout_s`` above ``min_instances`` are stopped.
    """

    def __init__(
        self,
        definition: TaskDefinition,
        runtime: Runtime,
        parent: ActorRef[ManagerMessage] | None = None,
        *,
        budget: InstanceBudget | None = None,
        backoff: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        policy = definition.policy
        assert policy.max_instances is not None and policy.max_concurrency is not None
        # Room for the queue limit plus a notification per possible in-flight call.
        self.inbox_size = (policy.max_pending or 0) + 2 * policy.max_instances * (policy.max_concurrency + 2) + 64
        super().__init__(f"task {definition.task_name!r}")
        self.definition = definition
        self.status = TaskStatus.ACTIVE
        self._parent = parent
        self._budget = budget or InstanceBudget(10**9)
        self._backoff_base, self._backoff_max = backoff
        self._start_failures = 0
        self._crash_starts = 0
        """Failed starts in a row the artifact may be to blame for (what DEGRADED counts)."""
        self._backoff_until = -math.inf
        self._round_robin = 0
        self._queue_full = False
        self._stop_reason: SpearError | None = None
        self._draining: SpearError | None = None
        self._runtime = runtime
        self._policy = policy
        self._slots: dict[str, _Slot] = {}
        self._pending: collections.deque[_Pending] = collections.deque()
        self._running: dict[str, tuple[str, Submit, Execute]] = {}
        """execution id → (instance running it, the call as it was submitted, the
        Execute sent for this attempt)"""
        self._timer_at = math.inf
        """When the timer looks next (lowered by :meth:`_wake_timer_by`)."""
        self._timer_scope: trio.CancelScope | None = None
        """The timer's wait, while it waits: moving its deadline wakes it no sooner."""
        self._started_due: collections.deque[tuple[float, Execute]] = collections.deque()
        """Dispatched attempts, in order, with when their start is due to be reported."""
        self._queued_deadline = math.inf
        self._ids = itertools.count(1)
        self._last_start_error: SpearError | None = None
        self._cancels: dict[str, str] = {}
        """Running executions asked to cancel (id → reason) until their attempt ends: one
        that comes back unstarted from a dying instance is cancelled, not run elsewhere."""

    @property
    def _max_concurrency(self) -> int:
        return self._policy.max_concurrency or 1

    async def on_start(self) -> None:
        self.nursery.start_soon(self._timer)
        self._replenish()

    def on_stop(self) -> None:
        self._fail_pending(SpearError(ErrorCode.UNAVAILABLE, f"task {self.definition.task_name} stopped"))

    def handle(self, message: TaskMessage) -> None:
        if isinstance(message, Submit):
            self._submit(message)
        elif isinstance(message, ExecutionFinished):
            slot = self._slots.get(message.instance_id)
            if self._forget_attempt(message.execution_id, message.execute) is not None:
                self._cancels.pop(message.execution_id, None)
            if slot is not None:
                slot.inflight -= 1
                slot.last_used = trio.current_time()
        elif isinstance(message, InstanceReady):
            slot = self._slots.get(message.instance_id)
            if slot is not None:
                slot.ready = True
                slot.last_used = trio.current_time()
                self._last_start_error = None
                self._start_failures = 0
                self._crash_starts = 0
                self._backoff_until = -math.inf
                if self.status is TaskStatus.DEGRADED:
                    self.status = TaskStatus.ACTIVE
                    self._report_instances()
        elif isinstance(message, AttemptDone):
            self._attempt_done(message)
        elif isinstance(message, InstanceExited):
            self._instance_exited(message)
        elif isinstance(message, CancelExecution):
            self._cancel(message)
        elif isinstance(message, GetTaskInfo):
            message.reply.send(self.info())
        elif isinstance(message, StopTask):
            if message.drain:
                self._draining = message.reason
                self.status = TaskStatus.DELETING
            else:
                self._stop_task(message.reason)
        if self._draining is not None and not self._pending and not self._running and self._stop_reason is None:
            self._stop_task(self._draining)
        if self._stop_reason is not None:
            if not self._slots:
                self.stop()
            return
        if self._pending or self._queue_full:
            self._dispatch()

    def _stop_task(self, reason: SpearError) -> None:
        """Fail what waits, stop every instance with *reason*; the actor stops once
        the last InstanceExited is in (the instances end gracefully meanwhile)."""
        self._stop_reason = reason
        self.status = TaskStatus.DELETING
        self._fail_pending(reason)
        for slot in self._slots.values():
            if slot.ready:
                slot.ref.post(StopInstance(reason))
            else:
                slot.scope.cancel()

    # -- scheduling -----------------------------------------------------------
    def _submit(self, submit: Submit) -> None:
        refusal = self._stop_reason or self._draining
        if refusal is not None:
            submit.reply.fail(SpearError(ErrorCode.UNAVAILABLE, f"task is stopping: {refusal.message}"))
            return
        if self._degraded() and not any(slot.ready for slot in self._slots.values()):
            submit.reply.fail(self._degraded_error())
            return
        limit = self._policy.max_pending
        if limit is not None and len(self._pending) >= limit:
            submit.reply.fail(queue_full_error(self.definition.task_name, limit))
            self._set_queue_full(True)
            return
        entry = _Pending(submit)
        if submit.force_new_instance and len(self._slots) < (self._policy.max_instances or 1):
            slot = self._start_instance()
            entry.target = slot.instance_id if slot is not None else None
        self._pending.append(entry)
        self._queued_deadline = min(self._queued_deadline, submit.deadline)

    def _dispatch(self) -> None:
        now = trio.current_time()
        while self._pending:
            entry = self._pending[0]
            slot = self._pick(entry.target)
            if slot is None:
                break
            submit = entry.submit
            queued = submit.call  # a new Call: half the cost of dataclasses.replace
            call = Call(
                queued.execution_id,
                queued.function_name,
                queued.params,
                max(0.0, submit.deadline - now),
                queued.stream,
                queued.environment,
                queued.headers,
            )
            reply: Reply[Outcome] = submit.reply
            if submit.retries > 0:
                # This attempt answers the task, which may run it again elsewhere.
                reply = Reply()
                reply.on_done = functools.partial(self._attempt_ended, submit)
            execute = Execute(call, reply, submit.sink)
            try:
                slot.work.tell_nowait(execute)
            except SpearError:
                # The instance is stopping (its InstanceExited is on the way): skip it.
                slot.ready = False
                continue
            self._pending.popleft()
            slot.inflight += 1
            slot.executions += 1
            self._running[call.execution_id] = (slot.instance_id, submit, execute)
            marks = submit.reply
            if marks.started_at is None:
                marks.started_at = time.time()
            marks.instance_id = slot.instance_id
            if self._parent is not None:
                due = now + STARTED_REPORT_AFTER
                self._started_due.append((due, execute))
                if due < self._timer_at:
                    self._wake_timer_by(due)
        if self._pending:
            # A call has to wait: the timer must expire it at its deadline.
            self._wake_timer_by(self._queued_deadline)
        if self._queue_full and len(self._pending) < (self._policy.max_pending or 0):
            self._set_queue_full(False)
        self._queued_deadline = math.inf
        self._scale_up()

    def _wake_timer_by(self, when: float) -> None:
        """Make sure the timer looks again no later than *when* (free if it will
        anyway; a later *when* does not wake it now either, it moves its deadline)."""
        if when < self._timer_at:
            self._timer_at = when
            if self._timer_scope is not None:
                self._timer_scope.deadline = when

    def _report_started(self, now: float) -> float:
        """Tell the manager of the starts due by *now* whose attempt still runs;
        return when to look next (the next due, but not sooner than a whole
        STARTED_REPORT_AFTER from now: reports go in batches, so a steady stream of
        short calls wakes the timer once per period, not once per call)."""
        due = self._started_due
        started: list[tuple[str, str, float]] = []
        while due and due[0][0] <= now:
            execute = due.popleft()[1]
            execution_id = execute.call.execution_id
            running = self._running.get(execution_id)
            if running is not None and running[2] is execute:
                started.append((execution_id, running[0], running[1].reply.started_at or time.time()))
        if started and self._parent is not None:
            self._parent.post(ExecutionsStarted(started))
        return max(due[0][0], now + STARTED_REPORT_AFTER) if due else math.inf

    def _attempt_ended(self, submit: Submit, outcome: Reply[Outcome]) -> None:
        # Runs in the instance's task that answered: post, never touch state here.
        self.ref.post(AttemptDone(submit, outcome))

    def _attempt_done(self, message: AttemptDone) -> None:
        submit, outcome = message.submit, message.outcome
        error = outcome.error
        if (
            error is not None
            and error.code is ErrorCode.INSTANCE_FAILED
            and submit.retries > 0
            and submit.deadline > trio.current_time()
            and self._stop_reason is None
            and submit.call.execution_id not in self._cancels
        ):
            log.info("%s: retrying %s after: %s", self.name, submit.call.execution_id, error.message)
            running = self._running.get(submit.call.execution_id)
            failed = self._slots.get(running[0]) if running is not None else None
            if failed is not None:
                failed.ready = False  # it is dying (its InstanceExited follows): not there again
            submit.retries -= 1
            self._pending.appendleft(_Pending(submit))
        elif error is not None:
            submit.reply.fail(error)
        else:
            assert outcome.value is not None
            submit.reply.send(outcome.value)

    def _pick(self, target: str | None) -> _Slot | None:
        if target is not None:
            slot = self._slots.get(target)
            if slot is None:  # the instance made for this call died: any will do
                return self._pick(None)
            return slot if slot.ready and slot.inflight < self._max_concurrency else None
        if self._policy.scheduling == "round_robin":
            slots = list(self._slots.values())
            for offset in range(len(slots)):
                slot = slots[(self._round_robin + offset) % len(slots)]
                if slot.ready and slot.inflight < self._max_concurrency:
                    self._round_robin = (self._round_robin + offset + 1) % len(slots)
                    return slot
            return None
        best: _Slot | None = None
        for slot in self._slots.values():
            if slot.ready and slot.inflight < self._max_concurrency and (best is None or slot.inflight < best.inflight):
                best = slot
        return best

    def _scale_up(self) -> None:
        waiting = len(self._pending)  # O(1); the rare calls aimed at one instance count too
        starting = sum(1 for slot in self._slots.values() if not slot.ready)
        max_instances = self._policy.max_instances or 1
        while waiting > starting * self._max_concurrency and len(self._slots) < max_instances:
            if self._start_instance() is None:
                break
            starting += 1
        if self._pending and not self._slots:
            if self._degraded():
                self._fail_pending(self._degraded_error())
            elif not self._in_backoff():
                self._fail_pending(
                    SpearError(
                        ErrorCode.RESOURCE_EXHAUSTED,
                        f"node instance limit ({self._budget.limit}) reached; no instance for task "
                        f"{self.definition.task_name}",
                        {"retry_after_ms": 100},
                    )
                )

    def _in_backoff(self) -> bool:
        return trio.current_time() < self._backoff_until

    def _degraded(self) -> bool:
        """Backing off after several failed starts in a row: calls fail fast then."""
        return self._crash_starts >= DEGRADED_AFTER and self._in_backoff()

    def _degraded_error(self) -> SpearError:
        last = self._last_start_error
        wait_ms = max(1, math.ceil((self._backoff_until - trio.current_time()) * 1000))
        return SpearError(
            ErrorCode.UNAVAILABLE,
            f"task {self.definition.task_name} is DEGRADED after {self._crash_starts} failed starts; "
            f"last error: {last.message if last else 'unknown'}",
            {**(last.details if last else {}), "retry_after_ms": wait_ms},
        )

    def _start_instance(self) -> _Slot | None:
        """Start an instance, unless the task is backing off or the node is full."""
        if self._in_backoff() or not self._budget.try_acquire():
            return None
        definition = self.definition
        instance_id = f"{definition.task_id}-{next(self._ids)}-{uuid.uuid4().hex[:6]}"
        spec = InstanceSpec(
            instance_id=instance_id,
            task_id=definition.task_id,
            task_name=definition.task_name,
            artifact=definition.artifact,
            artifact_path=definition.artifact_path,
            artifact_digest=definition.artifact_digest,
        )
        actor = InstanceActor(spec, self._runtime, self.ref, self._max_concurrency)
        slot = _Slot(instance_id, actor.ref, actor.work, trio.CancelScope())
        self._slots[instance_id] = slot
        self._report_instances()
        self.nursery.start_soon(self._run_instance, slot, actor)
        if len(self._slots) > (self._policy.min_instances or 0) and self._policy.idle_timeout_s is not None:
            self._wake_timer_by(trio.current_time() + self._policy.idle_timeout_s)  # reaping may be due then
        return slot

    async def _run_instance(self, slot: _Slot, actor: InstanceActor) -> None:
        try:
            with slot.scope:
                await actor.run()
        finally:
            self._budget.release()

    def _report_instances(self) -> None:
        if self._parent is not None:
            self._parent.post(TaskInstances(self.definition.task_id, len(self._slots), self.status.value))

    def _forget_attempt(self, execution_id: str, execute: Execute) -> Submit | None:
        """Drop the running entry of *execute*; its submission, or None when the
        entry is another (later) attempt of the same execution id."""
        running = self._running.get(execution_id)
        if running is None or running[2] is not execute:
            return None
        del self._running[execution_id]
        return running[1]

    def _instance_exited(self, message: InstanceExited) -> None:
        slot = self._slots.pop(message.instance_id, None)
        self._report_instances()
        # Calls that reached it but never started, as they were submitted (their
        # caller's reply, deadline and retries): failed if the task is stopping,
        # else back to the head of the queue.
        unstarted = [
            submit
            for execute in message.unstarted
            if (submit := self._forget_attempt(execute.call.execution_id, execute)) is not None
        ]
        if self._stop_reason is not None:
            for submit in unstarted:
                submit.reply.fail(self._stop_reason)
            return
        for submit in reversed(unstarted):
            reason = self._cancels.pop(submit.call.execution_id, None)
            if reason is not None:
                submit.reply.fail(SpearError(ErrorCode.CANCELLED, reason))
            else:
                self._pending.appendleft(_Pending(submit))
        if slot is None:
            return
        if message.reason is not None:
            log.warning("%s: instance %s exited: %s", self.name, message.instance_id, message.reason.message)
        if not message.ready and message.reason is not None:
            # A failed start: back off exponentially so a broken artifact is not
            # spawned in a loop; meanwhile the task is DEGRADED and fails fast.
            self._last_start_error = message.reason
            self._start_failures += 1
            if message.reason.details.get("exit_code") not in _KILLED_FROM_OUTSIDE:
                self._crash_starts += 1
            delay = min(self._backoff_max, self._backoff_base * 2 ** (self._start_failures - 1))
            self._backoff_until = trio.current_time() + delay
            if self._crash_starts >= DEGRADED_AFTER:
                self.status = TaskStatus.DEGRADED
                self._report_instances()
            self._wake_timer_by(self._backoff_until)
            if self._degraded() and not any(s.ready for s in self._slots.values()):
                # A crash loop and nothing can serve the waiting calls: fail them fast.
                # Before that, a failed start is the instance's failure, not the
                # calls': they wait for the next start, up to their deadline.
                self._fail_pending(self._degraded_error())
                return
        self._replenish()

    def _replenish(self) -> None:
        """Start instances up to min_instances (unless backing off)."""
        for _ in range(len(self._slots), self._policy.min_instances or 0):
            if self._start_instance() is None:
                return

    def _fail_pending(self, error: SpearError) -> None:
        while self._pending:
            self._pending.popleft().submit.reply.fail(SpearError(error.code, error.message, dict(error.details)))

    def _cancel(self, message: CancelExecution) -> None:
        for entry in self._pending:
            if entry.submit.call.execution_id == message.execution_id:
                # Still waiting: it never starts.
                self._pending.remove(entry)
                entry.submit.reply.fail(SpearError(ErrorCode.CANCELLED, message.reason))
                return
        running = self._running.get(message.execution_id)
        slot = self._slots.get(running[0]) if running else None
        if slot is not None:
            self._cancels[message.execution_id] = message.reason
            slot.ref.post(message)

    def _set_queue_full(self, full: bool) -> None:
        if full != self._queue_full:
            self._queue_full = full
            if self._parent is not None:
                self._parent.post(TaskQueueFull(self.definition.task_id, full))

    # -- time -------------------------------------------------------------------
    async def _timer(self) -> None:
        """Expire waiting calls at their deadline; stop instances idle too long;
        report the starts of executions that run longer than STARTED_REPORT_AFTER."""
        idle_timeout = self._policy.idle_timeout_s
        while True:
            now = trio.current_time()
            self._timer_at = math.inf  # what is asked of it from here on counts
            wake = self._report_started(now)
            for entry in list(self._pending):
                deadline = entry.submit.deadline
                if deadline <= now:
                    self._pending.remove(entry)
                    last = self._last_start_error
                    entry.submit.reply.fail(
                        SpearError(
                            ErrorCode.DEADLINE_EXCEEDED,
                            f"{entry.submit.call.function_name}: no instance of task "
                            f"{self.definition.task_name!r} was free before the deadline"
                            + (f" (last start error: {last.message})" if last is not None else ""),
                            dict(last.details) if last is not None else {},
                        )
                    )
                else:
                    wake = min(wake, deadline)
            if idle_timeout is not None:
                wake = min(wake, self._reap_idle(now, idle_timeout))
            if self._backoff_until > now:
                wake = min(wake, self._backoff_until)
            elif self._stop_reason is None and self._draining is None:
                self._replenish()
                self._dispatch()  # calls that waited out the back-off may start instances now
            wake = min(wake, self._timer_at)
            self._timer_at = wake
            with trio.CancelScope(deadline=wake) as self._timer_scope:
                await trio.sleep_forever()
            self._timer_scope = None

    def _reap_idle(self, now: float, idle_timeout: float) -> float:
        """Stop instances idle past the timeout (above the minimum); return when to look again."""
        wake = math.inf
        keep = self._policy.min_instances or 0
        live = len(self._slots)
        for slot in list(self._slots.values()):
            if not slot.ready or slot.inflight:
                # Busy now, so idle no earlier than a full timeout from now: looking
                # again then means no wake-up is needed when its calls finish.
                if live > keep:
                    wake = min(wake, now + idle_timeout)
                continue
            expires = slot.last_used + idle_timeout
            if expires <= now and live > keep:
                slot.scope.cancel()
                live -= 1
            elif live > keep:
                wake = min(wake, expires)
        return wake

    # -- status -----------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """The task as a status map."""
        return {
            **self.definition.describe(self.status),
            "policy": dataclasses.asdict(self._policy),
            "pending": len(self._pending),
            "running": len(self._running),
            "last_start_error": self._last_start_error.to_dict() if self._last_start_error else None,
            "start_failures": self._start_failures,
            "instances": [
                {
                    "instance_id": slot.instance_id,
                    "status": _slot_status(slot).value,
                    "inflight": slot.inflight,
                    "executions": slot.executions,
                }
                for slot in self._slots.values()
            ],
        }


def _slot_status(slot: _Slot) -> InstanceStatus:
    if not slot.ready:
        return InstanceStatus.CREATING
    return InstanceStatus.RUNNING if slot.inflight else InstanceStatus.READY

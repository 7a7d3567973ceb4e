"""ManagerActor: the node's task table, execution registry and router."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from ..artifacts import ArtifactStore, describe_artifact, same_artifact
from ..errors import ErrorCode, SpearError
from ..model import ExecutionMode, ExecutionStatus, InstancePolicy, InvocationType, TaskStatus
from ..policy import OperatorPolicy
from ..runtimes.base import Call, Runtime
from ..store import NODE_RESTARTED, ExecutionRow, pack
from .admission import AdmissionGate, queue_full_error
from .budget import InstanceBudget
from .executions import ExecutionRecord, ExecutionRegistry, not_found
from .ids import RandomIds
from .mailbox import Actor, Reply, fail_reply, take_queued
from .messages import (
    CancelExecution,
    DeclareTask,
    DeleteTask,
    Drain,
    ExecutionDone,
    ExecutionsStarted,
    Invoke,
    ManagerMessage,
    Outcome,
    OutcomeSlot,
    Query,
    Routed,
    StopTask,
    StoredLookup,
    Submit,
    TaskCreated,
    TaskInstances,
    TaskQueueFull,
    WaitExecution,
    WaitExecutions,
)
from .queries import ManagerQueries
from .task_table import ManagerTaskTable, TaskSeed, _TaskEntry

__all__ = ["ManagerActor", "TaskSeed"]

log = logging.getLogger(__name__)

_READ_BATCH = 2_000
"""Most execution ids one store read looks up (a watch's ids may need several)."""
_ANSWER_SLICE = 128
"""Most looked-up ids the manager answers in one message (one step of its loop)."""


class ManagerActor(ManagerQueries, ManagerTaskTable, Actor[ManagerMessage]):
    """Owns the task table (id → task, name → id) and the execution registry,
    creates tasks, routes calls, and answers every FunctionService query.

    Creating a task involves slow work (fetching the artifact), done in a task of
    the manager's nursery; calls for a task being created wait for it in
    ``_creating`` rather than creating it twice.
    """

    inbox_size = 4096

    def __init__(
        self,
        *,
        runtimes: dict[str, Runtime],
        artifacts: ArtifactStore,
        defaults: InstancePolicy,
        default_timeout_ms: int,
        registry: ExecutionRegistry | None = None,
        budget: InstanceBudget | None = None,
        admission: AdmissionGate | None = None,
        backoff: tuple[float, float] = (0.5, 30.0),
        max_running_executions: int = 100_000,
        policy: OperatorPolicy | None = None,
    ) -> None:
        super().__init__("manager")
        self._policy = policy
        self._runtimes = runtimes
        self._artifacts = artifacts
        self._defaults = defaults
        self._default_timeout = default_timeout_ms / 1000
        self._execution_ids = RandomIds("exec-")
        self._tasks: dict[str, _TaskEntry] = {}
        self._by_name: dict[str, str] = {}
        self._creating: dict[str, list[Invoke | DeclareTask]] = {}
        self.registry = registry if registry is not None else ExecutionRegistry()
        self._budget = budget or InstanceBudget(10**9)
        self.admission = admission or AdmissionGate()
        """Tasks refusing calls (queue full), shared read-only with the node."""
        self._backoff = backoff
        self._max_running = max_running_executions
        self._started_at = time.time()
        self._idle_waiters: list[Reply[None]] = []
        self._lookups: dict[str, list[Callable[[ExecutionRow | SpearError | None], None]]] = {}
        """Execution ids being read from the store, with what to do with the answer."""
        self._unread: list[str] = []
        """Ids in :attr:`_lookups` not yet handed to a store read (the next batch)."""
        self._reading = False
        self.draining: str | None = None
        """Set when the node stops taking calls (shutdown): the reason new calls get."""

    def handle(self, message: ManagerMessage) -> None:
        if isinstance(message, Invoke):
            self._invoke(message)
        elif isinstance(message, ExecutionsStarted):
            for execution_id, instance_id, started_at in message.started:
                record = self.registry.get(execution_id)
                if record is not None:
                    self.registry.started(record, instance_id, started_at)
        elif isinstance(message, ExecutionDone):
            self._execution_done(message)
        elif isinstance(message, Query):
            self._query(message)
        elif isinstance(message, WaitExecution):
            self._wait(message)
        elif isinstance(message, WaitExecutions):
            for wait in message.waits:
                self._wait(wait)
        elif isinstance(message, StoredLookup):
            for execution_id, row in message.rows.items():
                for then in self._lookups.pop(execution_id, ()):
                    then(row)
        elif isinstance(message, CancelExecution):
            self._cancel(message)
        elif isinstance(message, TaskInstances):
            entry = self._tasks.get(message.task_id)
            if entry is not None:
                entry.instances = message.instances
                if entry.status is not TaskStatus.DELETING:
                    entry.status = TaskStatus(message.status)
        elif isinstance(message, TaskQueueFull):
            entry = self._tasks.get(message.task_id)
            if entry is not None:
                self.admission.mark(message.task_id, entry.definition.task_name, message.full)
        elif isinstance(message, DeclareTask):
            self._declare(message)
        elif isinstance(message, TaskCreated):
            self._task_created(message)
        elif isinstance(message, DeleteTask):
            self._delete(message)
        elif isinstance(message, Drain):
            self.draining = message.reason
            self._idle_waiters.append(message.reply)
            self._answer_idle_waiters()
        else:
            self._task_stopped(message)

    # -- the store --------------------------------------------------------------------
    def lookup(self, execution_id: str, then: Callable[[ExecutionRow | SpearError | None], None]) -> None:
        """Read *execution_id* from the store in a worker thread; *then(row)* runs in
        this actor's handler with the row, None (unknown) or the store's error.

        Ids asked for while a read runs are gathered and read together in the next
        one: a watch of 10,000 unknown ids costs a few store reads and one task, not
        10,000 of each (whose mere number made full GC passes hold the loop)."""
        waiting = self._lookups.get(execution_id)
        if waiting is not None:
            waiting.append(then)
            return
        self._lookups[execution_id] = [then]
        self._unread.append(execution_id)
        if not self._reading:
            self._reading = True
            self.nursery.start_soon(self._read_batches)

    async def _read_batches(self) -> None:
        try:
            while self._unread:
                batch = self._unread[:_READ_BATCH]
                del self._unread[:_READ_BATCH]
                rows: dict[str, ExecutionRow] | SpearError
                try:
                    rows = await self.registry.store.load_many(batch)
                except Exception as exc:  # the database is unreadable: answer, never hang
                    log.exception("store: reading %d executions failed", len(batch))
                    rows = SpearError(ErrorCode.UNAVAILABLE, f"execution store unreadable: {type(exc).__name__}: {exc}")
                # In slices, with a checkpoint between them: the manager answers each
                # slice in its own step, never 10,000 waiters in one.
                for start in range(0, len(batch), _ANSWER_SLICE):
                    ids = batch[start : start + _ANSWER_SLICE]
                    if isinstance(rows, SpearError):
                        self.ref.post(StoredLookup(dict.fromkeys(ids, rows)))
                    else:
                        self.ref.post(StoredLookup({i: rows.get(i) for i in ids}))
                    await trio.lowlevel.checkpoint()
        finally:
            self._reading = False

    def _wait(self, message: WaitExecution) -> None:
        record = self.registry.get(message.execution_id)
        if record is not None:
            self.registry.watch(record, message.reply)
        elif not self.registry.store.persistent:
            message.reply.fail(not_found(message.execution_id))
        else:

            def answer(row: ExecutionRow | SpearError | None) -> None:
                if isinstance(row, SpearError):
                    message.reply.fail(row)
                elif row is None:
                    message.reply.fail(not_found(message.execution_id))
                else:
                    self.registry.watch(ExecutionRecord.from_row(row), message.reply)

            self.lookup(message.execution_id, answer)

    # -- routing ------------------------------------------------------------------
    def _invoke(self, message: Invoke, looked_up: bool = False) -> None:
        request = message.request
        execution_id = request.context.execution_id
        duplicate = self.registry.get(execution_id) if execution_id else None
        if duplicate is not None and _aborted_by_restart(duplicate.error):
            self.registry.forget(execution_id)  # never finished: it may run now
            duplicate = None
        if duplicate is not None:
            self._route_duplicate(duplicate, message)
            return
        if execution_id and not looked_up and self.registry.store.persistent:
            # An id not in memory may still have finished before (idempotency
            # across restarts and beyond the memory cache): ask the store first.
            def then(row: ExecutionRow | SpearError | None) -> None:
                if isinstance(row, SpearError):
                    message.reply.fail(row)
                elif row is not None and row.status not in ("PENDING", "RUNNING") and not _aborted_row(row):
                    self._route_duplicate(ExecutionRecord.from_row(row), message)
                else:
                    self._invoke(message, looked_up=True)

            self.lookup(execution_id, then)
            return
        if self.draining is not None:
            message.reply.fail(SpearError(ErrorCode.UNAVAILABLE, self.draining))
            return
        if self.registry.store.backlogged():
            failed = self.registry.store.stats().get("failed")
            message.reply.fail(
                SpearError(ErrorCode.UNAVAILABLE, f"the execution store failed: {failed}")
                if failed
                else SpearError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    "the execution store is behind on writes; retry shortly",
                    {"retry_after_ms": 100},
                )
            )
            return
        counts = self.registry.counts
        if counts[ExecutionStatus.PENDING] + counts[ExecutionStatus.RUNNING] >= self._max_running:
            message.reply.fail(
                SpearError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"node has {self._max_running} executions in progress (max_running_executions)",
                    {"retry_after_ms": 50},
                )
            )
            return
        if request.invocation_type is InvocationType.NEW_TASK:
            task_id = self._by_name.get(request.task_name)
            key = f"name:{request.task_name}"
            if task_id is not None and request.artifact_spec is not None:
                existing = self._tasks[task_id].definition.artifact
                if not same_artifact(existing, request.artifact_spec):
                    if not request.force_new_instance:
                        message.reply.fail(
                            SpearError(
                                ErrorCode.ALREADY_EXISTS,
                                f"task {request.task_name!r} exists with artifact {describe_artifact(existing)}; "
                                f"this request names {describe_artifact(request.artifact_spec)} "
                                "(set force_new_instance to replace it)",
                            )
                        )
                        return
                    task_id, key = None, f"upgrade:{request.task_name}"  # replaced once the new one exists
        else:
            task_id = request.task_id if request.task_id in self._tasks else None
            key = f"id:{request.task_id}"
            if task_id is None and not request.create_if_not_exists:
                message.reply.fail(
                    SpearError(
                        ErrorCode.NOT_FOUND, f"task {request.task_id!r} not found and create_if_not_exists is false"
                    )
                )
                return
        if task_id is not None:
            self._route(self._tasks[task_id], message)
            return
        if request.artifact_spec is None:
            message.reply.fail(
                SpearError(
                    ErrorCode.INVALID_ARGUMENT,
                    "artifact_spec is required for new task creation"
                    if request.invocation_type is InvocationType.NEW_TASK
                    else "cannot create task without artifact_spec",
                )
            )
            return
        timeout = request.context.timeout_ms / 1000 if request.context.timeout_ms else self._default_timeout
        seed = TaskSeed(
            task_name=request.task_name or request.task_id,
            description=request.task_description,
            artifact=request.artifact_spec,
            policy=request.policy,
            task_id=request.task_id if request.invocation_type is InvocationType.EXISTING_TASK else "",
            deadline=trio.current_time() + timeout,
            persist=True,
        )
        self._create_once(key, seed, message)

    def _route(self, entry: _TaskEntry, message: Invoke) -> None:
        request = message.request
        if self.admission.is_full(entry.definition.task_id):  # refused without the hop to the task
            message.reply.fail(queue_full_error(entry.definition.task_name))
            return
        context = request.context
        execution_id = context.execution_id or self._execution_ids.new()
        if execution_id in self.registry:  # created by a racing duplicate while the task was made
            self._route_duplicate(self.registry.require(execution_id), message)
            return
        timeout = context.timeout_ms / 1000 if context.timeout_ms else self._default_timeout
        deadline = trio.current_time() + timeout
        call = Call(
            execution_id=execution_id,
            function_name=request.function_name,
            params=request.parameters,
            timeout=timeout,
            stream=message.sink is not None,
            environment=context.environment,
            headers=context.headers,
        )
        outcome = message.outcome or OutcomeSlot()
        submit = Submit(call, outcome, deadline, message.sink, request.force_new_instance, context.max_retries)
        try:
            entry.ref.tell_nowait(submit)
        except SpearError as exc:
            message.reply.fail(exc)
            return
        replay = None
        if request.execution_mode is ExecutionMode.ASYNC and context.max_retries > 0 and self.registry.store.persistent:
            # Asked for retries: if the node dies first, it is run again after the restart.
            replay = pack(
                {
                    "function_name": request.function_name,
                    "parameters": request.parameters,
                    "task_id": entry.definition.task_id,
                    "timeout_ms": context.timeout_ms,
                    "max_retries": context.max_retries,
                    "environment": context.environment,
                    "headers": context.headers,
                }
            )
        record = self.registry.create(
            execution_id, entry.definition.task_id, request.function_name, request.execution_mode, replay
        )

        def notify_done(_: Reply[Outcome]) -> None:
            # Runs in whichever task answered the outcome: only post, never touch state.
            self.ref.post(ExecutionDone(execution_id, outcome))

        outcome.on_done = notify_done
        estimate = entry.latency.percentile(0.5) if request.execution_mode is ExecutionMode.ASYNC else None
        message.reply.send(
            Routed(entry.definition.task_id, execution_id, deadline, outcome, "PENDING", estimate, record.write_seq)
        )

    def _route_duplicate(self, record: ExecutionRecord, message: Invoke) -> None:
        """A second submission of an execution id: report the first, never run twice."""
        watcher: Reply[Outcome] = message.outcome or Reply()
        self.registry.watch(record, watcher)
        entry = self._tasks.get(record.task_id)
        timeout = message.request.context.timeout_ms / 1000 or self._default_timeout
        message.reply.send(
            Routed(
                record.task_id,
                record.execution_id,
                trio.current_time() + timeout,
                watcher,
                record.status.value,
                entry.latency.percentile(0.5) if entry else None,
            )
        )

    def _answer_idle_waiters(self) -> None:
        counts = self.registry.counts
        if counts[ExecutionStatus.PENDING] + counts[ExecutionStatus.RUNNING] == 0:
            for waiter in self._idle_waiters:
                waiter.send(None)
            self._idle_waiters.clear()

    def _execution_done(self, message: ExecutionDone) -> None:
        record = self.registry.get(message.execution_id)
        if record is None:
            return
        outcome = message.outcome
        if record.status is ExecutionStatus.PENDING and outcome.started_at is not None:
            # it ended before its start was reported: the slot's marks say where and when
            self.registry.started(record, outcome.instance_id, outcome.started_at)
        self.registry.finish(record, outcome.value, outcome.error)
        if self._idle_waiters:
            self._answer_idle_waiters()
        entry = self._tasks.get(record.task_id)
        if entry is not None:
            entry.counts[record.status.value] += 1
            if record.status is ExecutionStatus.COMPLETED and record.execution_time_ms is not None:
                entry.latency.add(record.execution_time_ms)

    # -- cancellation -------------------------------------------------------------
    def _cancel(self, message: CancelExecution) -> None:
        try:
            record = self.registry.require(message.execution_id)
        except SpearError as exc:
            if message.reply is not None:
                message.reply.fail(exc)
            return
        if not record.finished:
            entry = self._tasks.get(record.task_id)
            if entry is not None:
                entry.ref.post(CancelExecution(message.execution_id, message.reason, message.force))
        if message.reply is not None:
            message.reply.send(record.to_dict(include_result=False))

    def on_stop(self) -> None:
        error = SpearError(ErrorCode.UNAVAILABLE, "node is shutting down")
        # Notes already in the inbox finish records first (a caller may have had
        # its answer while the note was still queued): only then is anything left
        # unfinished really cut short by the shutdown.
        for message in take_queued(self._inbox):
            if isinstance(message, (ExecutionDone, ExecutionsStarted)):
                self.handle(message)
            else:
                fail_reply(message, error)
        # Executions still unfinished are recorded as FAILED with the reason, and
        # whoever waits for them learns it: nothing is dropped silently.
        for record in self.registry.live():
            if not record.finished:
                log.warning("execution %s (%s) ended by shutdown", record.execution_id, record.mode.value)
                shutdown = SpearError(ErrorCode.UNAVAILABLE, "node shut down before it finished")
                self.registry.finish(record, None, shutdown)
        for entry in self._tasks.values():
            entry.ref.post(StopTask(error))
            for deleter in entry.deleters:
                deleter.fail(error)
        for waiting in self._creating.values():
            for waiter in waiting:
                waiter.reply.fail(error)
        self._creating.clear()
        # Reads of the store still in flight are cancelled with the nursery: whoever
        # waits for one is answered now.
        lookups, self._lookups = self._lookups, {}
        self._unread.clear()
        for callbacks in lookups.values():
            for then in callbacks:
                then(SpearError(error.code, error.message))


def _aborted_by_restart(error: SpearError | None) -> bool:
    return error is not None and error.details.get("reason") == NODE_RESTARTED


def _aborted_row(row: ExecutionRow) -> bool:
    return _aborted_by_restart(row.error_value())

"""ManagerActor: the node's task table and router."""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from typing import Any

import trio

from ..artifacts import ArtifactStore
from ..errors import ErrorCode, SpearError
from ..model import InstancePolicy, InvocationType
from ..runtimes.base import Call, Runtime
from .mailbox import Actor, ActorRef, Reply
from .messages import (
    CancelExecution,
    DeclareTask,
    GetHealth,
    Invoke,
    ManagerMessage,
    Outcome,
    Routed,
    StopTask,
    Submit,
    TaskCreated,
    TaskMessage,
)
from .task import TaskActor, TaskDefinition

__all__ = ["ManagerActor", "TaskSeed"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True)
class TaskSeed:
    """What it takes to create a task: from an invocation or the node's config."""

    task_name: str
    description: str
    artifact: Any
    policy: InstancePolicy
    task_id: str = ""


@dataclasses.dataclass(slots=True, eq=False)
class _TaskEntry:
    ref: ActorRef[TaskMessage]
    definition: TaskDefinition
    scope: trio.CancelScope


class ManagerActor(Actor[ManagerMessage]):
    """Owns the task table (id → task, name → id), creates tasks, routes calls.

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
    ) -> None:
        super().__init__("manager")
        self._runtimes = runtimes
        self._artifacts = artifacts
        self._defaults = defaults
        self._default_timeout = default_timeout_ms / 1000
        self._tasks: dict[str, _TaskEntry] = {}
        self._by_name: dict[str, str] = {}
        self._creating: dict[str, list[Invoke | DeclareTask]] = {}
        self._started_at = time.time()

    def handle(self, message: ManagerMessage) -> None:
        if isinstance(message, Invoke):
            self._invoke(message)
        elif isinstance(message, DeclareTask):
            self._declare(message)
        elif isinstance(message, TaskCreated):
            self._task_created(message)
        elif isinstance(message, CancelExecution):
            entry = self._tasks.get(message.task_id)
            if entry is not None:
                entry.ref.post(message)
        elif isinstance(message, GetHealth):
            message.reply.send(self.health())

    # -- routing ------------------------------------------------------------------
    def _invoke(self, message: Invoke) -> None:
        request = message.request
        if request.invocation_type is InvocationType.NEW_TASK:
            task_id = self._by_name.get(request.task_name)
            key = f"name:{request.task_name}"
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
        seed = TaskSeed(
            task_name=request.task_name or request.task_id,
            description=request.task_description,
            artifact=request.artifact_spec,
            policy=request.policy,
            task_id=request.task_id if request.invocation_type is InvocationType.EXISTING_TASK else "",
        )
        self._create_once(key, seed, message)

    def _declare(self, message: DeclareTask) -> None:
        task_id = self._by_name.get(message.seed.task_name)
        if task_id is not None:
            message.reply.send(task_id)
        else:
            self._create_once(f"name:{message.seed.task_name}", message.seed, message)

    def _create_once(self, key: str, seed: TaskSeed, waiter: Invoke | DeclareTask) -> None:
        """Create the task for *key* unless it is being created already; *waiter* is
        answered when it exists."""
        waiting = self._creating.get(key)
        if waiting is not None:
            waiting.append(waiter)
            return
        self._creating[key] = [waiter]
        self.nursery.start_soon(self._create_task, key, seed)

    def _route(self, entry: _TaskEntry, message: Invoke) -> None:
        request = message.request
        context = request.context
        execution_id = context.execution_id or f"exec-{uuid.uuid4().hex}"
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
        outcome: Reply[Outcome] = Reply()
        submit = Submit(call, outcome, deadline, message.sink, request.force_new_instance)
        try:
            entry.ref.tell_nowait(submit)
        except SpearError as exc:
            message.reply.fail(exc)
            return
        message.reply.send(Routed(entry.definition.task_id, execution_id, deadline, outcome))

    # -- task creation --------------------------------------------------------------
    async def _create_task(self, key: str, seed: TaskSeed) -> None:
        try:
            definition = await self._define(seed)
        except SpearError as exc:
            self.ref.post(TaskCreated(key, None, exc))
        else:
            self.ref.post(TaskCreated(key, definition))

    async def _define(self, seed: TaskSeed) -> TaskDefinition:
        artifact = seed.artifact
        if artifact.artifact_type not in self._runtimes:
            raise SpearError(
                ErrorCode.INVALID_ARGUMENT,
                f"artifact_type {artifact.artifact_type!r} is not one of {sorted(self._runtimes)}",
            )
        resolved = await self._artifacts.resolve(artifact)
        policy = seed.policy.merged_over(InstancePolicy.from_dict(artifact.config.get("policy")))
        return TaskDefinition(
            task_id=seed.task_id or f"task-{uuid.uuid4().hex[:12]}",
            task_name=seed.task_name,
            description=seed.description,
            artifact=artifact,
            artifact_path=resolved.path,
            artifact_digest=resolved.digest,
            policy=policy.merged_over(self._defaults),
        )

    def _task_created(self, message: TaskCreated) -> None:
        waiting = self._creating.pop(message.key, [])
        if message.error is not None:
            for waiter in waiting:
                waiter.reply.fail(SpearError(message.error.code, message.error.message, message.error.details))
            return
        entry = self.add_task(message.definition)
        for waiter in waiting:
            if isinstance(waiter, Invoke):
                self._route(entry, waiter)
            else:
                waiter.reply.send(entry.definition.task_id)

    def add_task(self, definition: TaskDefinition) -> _TaskEntry:
        """Start a TaskActor for *definition* and enter it in the table."""
        actor = TaskActor(definition, self._runtimes[definition.artifact.artifact_type])
        entry = _TaskEntry(actor.ref, definition, trio.CancelScope())
        self._tasks[definition.task_id] = entry
        self._by_name[definition.task_name] = definition.task_id
        self.nursery.start_soon(self._run_task, entry, actor)
        return entry

    async def _run_task(self, entry: _TaskEntry, actor: TaskActor) -> None:
        try:
            with entry.scope:
                await actor.run()
        finally:
            definition = entry.definition
            if self._tasks.get(definition.task_id) is entry:
                del self._tasks[definition.task_id]
                if self._by_name.get(definition.task_name) == definition.task_id:
                    del self._by_name[definition.task_name]

    def on_stop(self) -> None:
        error = SpearError(ErrorCode.UNAVAILABLE, "node is shutting down")
        for entry in self._tasks.values():
            entry.ref.post(StopTask(error))
        for waiting in self._creating.values():
            for waiter in waiting:
                waiter.reply.fail(error)
        self._creating.clear()

    # -- status ---------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """A summary of the node's state."""
        return {
            "status": "SERVING",
            "uptime_s": round(time.time() - self._started_at, 3),
            "tasks": len(self._tasks),
            "creating_tasks": len(self._creating),
        }


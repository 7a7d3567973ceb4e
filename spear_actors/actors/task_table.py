"""The manager's task table: creating tasks (resolving their artifacts), entering
them in the table, stopping and deleting them.

A mixin of :class:`~.manager.ManagerActor`, kept apart because keeping the table is a
different job from routing calls; :class:`TaskSeed` (what it takes to create a task)
and the table's entries live here with it.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import uuid
from typing import Any

import trio

from ..artifacts import ArtifactStore, ResolvedArtifact, describe_artifact
from ..errors import ErrorCode, SpearError
from ..model import InstancePolicy, TaskStatus
from ..policy import OperatorPolicy
from ..runtimes.base import Runtime
from ..store import StoredTask
from .admission import AdmissionGate
from .budget import InstanceBudget
from .executions import ExecutionRegistry, LatencyWindow
from .mailbox import ActorRef, Reply
from .messages import DeclareTask, DeleteTask, Invoke, ManagerMessage, StopTask, TaskCreated, TaskMessage, TaskStopped
from .task import TaskActor, TaskDefinition

__all__ = ["ManagerTaskTable", "TaskSeed"]


@dataclasses.dataclass(slots=True)
class TaskSeed:
    """What it takes to create a task: from an invocation or the node's config."""

    task_name: str
    description: str
    artifact: Any
    policy: InstancePolicy
    task_id: str = ""
    trusted: bool = False
    """From the operator (the config file): not checked against the operator policy."""
    deadline: float = math.inf
    """Trio time by which the artifact must be resolved (the creating call's deadline)."""
    persist: bool = False
    """Keep the task in the store (a client created it): it exists again after a restart."""
    expect_digest: str = ""
    """The artifact must resolve to this sha256 (a restored task runs the bytes it was
    created with, or is not restored)."""


@dataclasses.dataclass(slots=True, eq=False)
class _TaskEntry:
    ref: ActorRef[TaskMessage]
    definition: TaskDefinition
    scope: trio.CancelScope
    status: TaskStatus = TaskStatus.ACTIVE
    instances: int = 0
    latency: LatencyWindow = dataclasses.field(default_factory=LatencyWindow)
    counts: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    deleters: list[Reply[dict[str, Any]]] = dataclasses.field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            **self.definition.describe(self.status),
            "instances": self.instances,
        }


class ManagerTaskTable:
    """Task creation, the table (``_tasks``, ``_by_name``) and deletion, for the manager."""

    registry: ExecutionRegistry
    admission: AdmissionGate
    ref: ActorRef[ManagerMessage]
    _policy: OperatorPolicy | None
    _runtimes: dict[str, Runtime]
    _artifacts: ArtifactStore
    _defaults: InstancePolicy
    _tasks: dict[str, _TaskEntry]
    _by_name: dict[str, str]
    _creating: dict[str, list[Invoke | DeclareTask]]
    _budget: InstanceBudget
    _backoff: tuple[float, float]
    nursery: trio.Nursery  # the actor's

    def _route(self, entry: _TaskEntry, message: Invoke) -> None:
        raise NotImplementedError  # the manager's

    # -- task creation --------------------------------------------------------------
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
        if self._policy is not None and not seed.trusted:
            self._policy.admit(artifact)
        runtime = self._runtimes[artifact.artifact_type]
        if runtime.needs_artifact:
            resolved = await self._artifacts.resolve(artifact, pin=True, deadline=seed.deadline)
        else:  # the code lives elsewhere (external agents): nothing to fetch or pin
            resolved = ResolvedArtifact(None, "")
        try:
            if seed.expect_digest and resolved.digest != seed.expect_digest:
                raise SpearError(
                    ErrorCode.FAILED_PRECONDITION,
                    f"artifact {describe_artifact(artifact)} is now sha256 {resolved.digest}, "
                    f"not {seed.expect_digest} as when the task was created",
                )
            policy = seed.policy.merged_over(InstancePolicy.from_dict(artifact.config.get("policy")))
            return TaskDefinition(
                task_id=seed.task_id or f"task-{uuid.uuid4().hex[:12]}",
                task_name=seed.task_name,
                description=seed.description,
                artifact=artifact,
                artifact_path=resolved.path,
                artifact_digest=resolved.digest,
                policy=policy.merged_over(runtime.policy_defaults).merged_over(self._defaults),
                origin_policy=seed.policy if seed.persist else None,
            )
        except BaseException:
            self._artifacts.unpin(resolved.digest)
            raise

    def _task_created(self, message: TaskCreated) -> None:
        waiting = self._creating.pop(message.key, [])
        if message.error is not None:
            for waiter in waiting:
                waiter.reply.fail(SpearError(message.error.code, message.error.message, message.error.details))
            return
        replaced = self._by_name.get(message.definition.task_name)
        entry = self.add_task(message.definition)
        self._persist_task(message.definition)
        if replaced is not None and message.key.startswith("upgrade:"):
            old = self._tasks[replaced]
            self.registry.store.delete_task(replaced)
            old.status = TaskStatus.DELETING
            old.ref.post(
                StopTask(
                    SpearError(ErrorCode.UNAVAILABLE, f"task {replaced} replaced by {entry.definition.task_id}"),
                    drain=True,
                )
            )
        for waiter in waiting:
            if isinstance(waiter, Invoke):
                self._route(entry, waiter)
            else:
                waiter.reply.send(entry.definition.task_id)

    def _persist_task(self, definition: TaskDefinition) -> None:
        if definition.origin_policy is None:
            return
        artifact = dataclasses.asdict(definition.artifact)
        self.registry.store.save_task(
            StoredTask(
                task_id=definition.task_id,
                task_name=definition.task_name,
                description=definition.description,
                artifact=artifact,
                artifact_digest=definition.artifact_digest,
                policy=dataclasses.asdict(definition.origin_policy),
                created_at=definition.created_at,
            )
        )

    def add_task(self, definition: TaskDefinition) -> _TaskEntry:
        """Start a TaskActor for *definition* and enter it in the table."""
        actor = TaskActor(
            definition,
            self._runtimes[definition.artifact.artifact_type],
            self.ref,
            budget=self._budget,
            backoff=self._backoff,
        )
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
            self._artifacts.unpin(entry.definition.artifact_digest)
            self.ref.post(TaskStopped(entry.definition.task_id))

    def _task_stopped(self, message: TaskStopped) -> None:
        entry = self._tasks.pop(message.task_id, None)
        if entry is None:
            return
        definition = entry.definition
        self.admission.mark(definition.task_id, definition.task_name, False)
        if self._by_name.get(definition.task_name) == definition.task_id:
            del self._by_name[definition.task_name]
        for deleter in entry.deleters:
            deleter.send({"task_id": definition.task_id, "deleted": True})

    # -- deletion ---------------------------------------------------------------------
    def _delete(self, message: DeleteTask) -> None:
        entry = self._tasks.get(message.task_id)
        if entry is None:
            message.reply.fail(SpearError(ErrorCode.NOT_FOUND, f"task {message.task_id!r} not found"))
            return
        live = self.registry.live(message.task_id)
        if live and not message.force:
            message.reply.fail(
                SpearError(
                    ErrorCode.FAILED_PRECONDITION,
                    f"task {message.task_id!r} has {len(live)} executions in progress (use force to cancel them)",
                    {"executions": len(live)},
                )
            )
            return
        entry.deleters.append(message.reply)
        self.registry.store.delete_task(message.task_id)
        if entry.status is not TaskStatus.DELETING:
            entry.status = TaskStatus.DELETING
            # The name is free at once: a NEW_TASK of that name now makes a new task.
            if self._by_name.get(entry.definition.task_name) == message.task_id:
                del self._by_name[entry.definition.task_name]
            entry.ref.post(StopTask(SpearError(ErrorCode.CANCELLED, f"task {message.task_id} deleted")))

"""InstanceActor: owns one runtime instance, runs executions on it, watches its health."""

from __future__ import annotations

import logging
from typing import Any

import trio

from ..errors import ErrorCode, SpearError
from ..model import InstanceStatus
from ..runtimes.base import InstanceSpec, Runtime, RuntimeInstance
from .mailbox import Actor, ActorRef, take_queued
from .messages import (
    CancelExecution,
    Execute,
    ExecutionFinished,
    InstanceExited,
    InstanceMessage,
    InstanceReady,
    Outcome,
    StopInstance,
    TaskMessage,
)

__all__ = ["InstanceActor"]

log = logging.getLogger(__name__)


class InstanceActor(Actor[InstanceMessage]):
    """One instance of a task. Its life: enter the runtime's instance context
    (CREATING → READY), serve Execute messages concurrently, and leave the context
    (stopping the instance) when told to stop, when cancelled, or when the instance
    dies; the parent always learns how it ended through :class:`InstanceExited`."""

    def __init__(
        self, spec: InstanceSpec, runtime: Runtime, parent: ActorRef[TaskMessage], max_concurrency: int
    ) -> None:
        # Room for a cancel per execution the task may dispatch here.
        self.inbox_size = max_concurrency + 16
        super().__init__(f"instance {spec.instance_id}")
        # Executions skip the control inbox: they go straight to one of
        # max_concurrency worker tasks, so a call costs no task spawn and no extra hop,
        # while cancels on the control inbox are served even when every worker is busy.
        work_send, self._work = trio.open_memory_channel[Execute](max_concurrency)
        self.work: ActorRef[Execute] = ActorRef(f"instance {spec.instance_id} workers", work_send)
        self._max_concurrency = max_concurrency
        self.spec = spec
        self.status = InstanceStatus.CREATING
        self._runtime = runtime
        self._parent = parent
        self._instance: RuntimeInstance | None = None
        self._running: dict[str, tuple[trio.CancelScope, Execute]] = {}
        self._failure: SpearError | None = None
        self._early_cancels: dict[str, str] = {}
        """Cancels that arrived before their execution left the work queue (id → reason);
        bounded: a cancel whose execution already ended is forgotten with the oldest."""

    async def run(self, *, task_status: trio.TaskStatus[ActorRef[InstanceMessage]] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the instance and serve it; announces the ref before it is READY."""
        task_status.started(self.ref)
        ready = False
        try:
            async with self._runtime.open_instance(self.spec) as instance:
                self._instance = instance
                ready = True
                self.status = InstanceStatus.READY
                self._parent.post(InstanceReady(self.spec.instance_id))
                await super().run()
                self.status = InstanceStatus.TERMINATING
        except SpearError as exc:
            self._failure = exc if ready else _start_failure(exc)
        finally:
            self.close_inbox()
            unstarted = self._close_work()
            self.status = InstanceStatus.FAILED if self._failure else InstanceStatus.TERMINATED
            self._parent.post(InstanceExited(self.spec.instance_id, self._failure, ready, unstarted))

    async def on_start(self) -> None:
        assert self._instance is not None
        self.nursery.start_soon(self._watch_health, self._instance)
        for _ in range(self._max_concurrency):
            self.nursery.start_soon(self._worker)

    def handle(self, message: InstanceMessage) -> None:
        if isinstance(message, Execute):  # also accepted on the control inbox
            self.nursery.start_soon(self._execute, message)
        elif isinstance(message, StopInstance):
            self._failure = message.reason
            self.stop()
        else:
            self._cancel(message)

    async def _worker(self) -> None:
        async for message in self._work:
            await self._execute(message)

    def _close_work(self) -> list[Execute]:
        """Refuse new executions; return the ones that never started."""
        self.work._send.close()
        unstarted = take_queued(self._work)
        self._work.close()
        return unstarted

    def _cancel(self, message: CancelExecution) -> None:
        running = self._running.get(message.execution_id)
        if running is None:
            # The task counts it as running here, but a worker has not taken it
            # yet: it is answered CANCELLED when it is taken, and never starts.
            self._early_cancels[message.execution_id] = message.reason
            while len(self._early_cancels) > 4 * self._max_concurrency + 16:
                del self._early_cancels[next(iter(self._early_cancels))]
            return
        scope, execute = running
        # The caller learns at once; the runtime's own cancel (and the agent's
        # confirmation, or the instance's replacement without one) follows.
        execute.reply.fail(SpearError(ErrorCode.CANCELLED, message.reason))
        scope.cancel()
        if message.force:
            self._failure = SpearError(
                ErrorCode.INSTANCE_FAILED,
                f"instance {self.spec.instance_id} killed by a forced cancel of {message.execution_id}",
            )
            self.stop()

    async def _watch_health(self, instance: RuntimeInstance) -> None:
        reason = await instance.wait_failed()
        log.warning("%s failed: %s", self.name, reason.message)
        self._failure = SpearError(
            ErrorCode.INSTANCE_FAILED,
            f"instance {self.spec.instance_id} failed: {reason.message}",
            reason.details,
        )
        self.stop()

    async def _execute(self, message: Execute) -> None:
        assert self._instance is not None
        call, reply = message.call, message.reply
        if self._early_cancels:
            reason = self._early_cancels.pop(call.execution_id, None)
            if reason is not None:
                reply.fail(SpearError(ErrorCode.CANCELLED, reason))
                self._parent.post(ExecutionFinished(self.spec.instance_id, call.execution_id, message))
                return
        self.status = InstanceStatus.RUNNING
        logs: list[str] = []
        started = trio.current_time()
        scope = trio.CancelScope()
        self._running[call.execution_id] = (scope, message)
        try:
            with scope:
                result = await self._instance.execute(call, message.sink, logs.append)
                reply.send(Outcome(result, self.spec.instance_id, _ms_since(started), logs))
        except SpearError as exc:
            reply.fail(_with_logs(exc, logs, self.spec.instance_id))
        except Exception as exc:  # a runtime bug must not kill the instance's other calls
            log.exception("%s: execution %s crashed", self.name, call.execution_id)
            reply.fail(SpearError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"))
        finally:
            if self._running.get(call.execution_id, (None, None))[1] is message:
                del self._running[call.execution_id]
            if not reply.done:
                reply.fail(
                    self._failure or SpearError(ErrorCode.UNAVAILABLE, f"instance {self.spec.instance_id} stopped")
                )
            if not self._running and self.status is InstanceStatus.RUNNING:
                self.status = InstanceStatus.READY
            self._parent.post(ExecutionFinished(self.spec.instance_id, call.execution_id, message))


def _ms_since(start: float) -> float:
    return round((trio.current_time() - start) * 1000, 3)


def _start_failure(exc: SpearError) -> SpearError:
    if exc.code in (ErrorCode.INSTANCE_FAILED, ErrorCode.INVALID_ARGUMENT, ErrorCode.NOT_FOUND):
        return exc
    return SpearError(ErrorCode.INSTANCE_FAILED, f"instance failed to start: {exc.message}", exc.details)


def _with_logs(exc: SpearError, logs: list[str], instance_id: str) -> SpearError:
    details: dict[str, Any] = dict(exc.details)
    details.setdefault("instance_id", instance_id)
    if logs:
        details["logs"] = logs
    return SpearError(exc.code, exc.message, details)

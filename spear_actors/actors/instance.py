"""InstanceActor: owns one runtime instance, runs executions on it, watches its health."""

from __future__ import annotations

import functools
import logging
from typing import Any

import trio

from ..deadlines import DeadlineQueue
from ..errors import ErrorCode, SpearError
from ..model import InstanceStatus
from ..runtimes.base import (
    InstanceSpec,
    RelayedExecution,
    RelayingInstance,
    Runtime,
    RuntimeInstance,
    deadline_error,
)
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


class _Running:
    """An execution on this instance, served by a task (``execute``) or relayed."""

    __slots__ = ("logs", "message", "over", "relayed", "scope", "started", "timed")

    def __init__(self, message: Execute) -> None:
        self.message = message
        self.started = trio.current_time()
        self.logs: list[str] = []
        self.scope: trio.CancelScope | None = None
        """The task's scope (an execution served by a task)."""
        self.relayed: RelayedExecution | None = None
        """The relayed execution (None: served by a task, or its connection was lost)."""
        self.over = False
        """True once a relayed execution has ended (answered, expired or stopped)."""
        self.timed = False
        """True once its deadline is in the instance's deadline queue."""


def _live(running: _Running) -> bool:
    return not running.over


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
        self._running: dict[str, _Running] = {}
        self._deadlines = DeadlineQueue[_Running](self._relayed_expired, _live)
        """Deadlines of relayed executions (a task's own execute enforces its own)."""
        self._failure: SpearError | None = None
        self._unsent: list[Execute] = []
        """Executions taken from the work channel once the instance had failed: never
        started here, they go back to the task with what is left in the channel."""
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
        instance = self._instance
        assert instance is not None
        self.nursery.start_soon(self._watch_health, instance)
        if isinstance(instance, RelayingInstance):
            self.nursery.start_soon(self._relay_work, instance)
        else:
            for _ in range(self._max_concurrency):
                self.nursery.start_soon(self._worker)

    def on_stop(self) -> None:
        error = self._stopped_error()
        for running in list(self._running.values()):
            if running.scope is None and not running.over:  # relayed: no task ends it
                if running.relayed is not None:
                    running.relayed.give_up("instance stopped")
                self._relayed_end(running, None, error)

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

    async def _relay_work(self, instance: RelayingInstance) -> None:
        """Start every execution as it arrives, with no task per call (a stream gets
        one): whatever is queued is started in the same step."""
        work = self._work
        while True:
            try:
                message = await work.receive()
            except trio.EndOfChannel:
                return
            while True:
                if message.sink is not None:
                    self.nursery.start_soon(self._execute, message)
                else:
                    await self._relay(instance, message)
                try:
                    message = work.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break

    async def _relay(self, instance: RelayingInstance, message: Execute) -> None:
        if self._cancelled_early(message):
            return
        if not instance.can_relay():  # failed, and this actor does not know yet
            self._unsent.append(message)
            return
        call = message.call
        self.status = InstanceStatus.RUNNING
        running = _Running(message)
        self._running[call.execution_id] = running
        try:
            relayed = await instance.relay_execute(
                call, running.logs.append, functools.partial(self._relayed_end, running)
            )
            running.relayed = relayed
            if running.over and relayed is not None:
                relayed.give_up("cancelled before it was sent")  # a no-op if it was answered
        except SpearError as exc:
            self._relayed_end(running, None, exc)
        except Exception as exc:  # a runtime bug must not kill the instance's other calls
            log.exception("%s: execution %s crashed", self.name, call.execution_id)
            self._relayed_end(running, None, SpearError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"))
        if call.timeout is not None and not running.over:
            running.timed = True
            self._deadlines.add(running.started + call.timeout, running, self.nursery)

    def _relayed_expired(self, running: _Running) -> None:
        if running.relayed is not None:
            running.relayed.give_up("deadline exceeded")
        self._relayed_end(running, None, deadline_error(running.message.call))

    def _relayed_end(self, running: _Running, result: Any, error: SpearError | None) -> None:
        """A relayed execution ended (called once; later calls do nothing)."""
        if running.over:
            return
        running.over = True
        running.relayed = None  # it held the answer's callback, which holds this entry
        reply = running.message.reply
        if error is None:
            reply.send(Outcome(result, self.spec.instance_id, _ms_since(running.started), running.logs))
        else:
            reply.fail(_with_logs(error, running.logs, self.spec.instance_id))
        if running.timed:
            self._deadlines.ended()
        self._ended(running.message)

    async def _cancel_relayed(self, running: _Running, reason: str) -> None:
        relayed = running.relayed
        if relayed is not None:
            await relayed.cancel(reason)
        # confirmed (then it has ended already), taken back, or unconfirmed (the
        # instance is failing): its caller has its CANCELLED answer
        self._relayed_end(running, None, SpearError(ErrorCode.CANCELLED, reason))

    def _close_work(self) -> list[Execute]:
        """Refuse new executions; return the ones that never started."""
        self.work._send.close()
        unstarted, self._unsent = [*self._unsent, *take_queued(self._work)], []
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
        # The caller learns at once; the runtime's own cancel (and the agent's
        # confirmation, or the instance's replacement without one) follows.
        running.message.reply.fail(SpearError(ErrorCode.CANCELLED, message.reason))
        if running.scope is not None:
            running.scope.cancel()
        elif not running.over:
            self.nursery.start_soon(self._cancel_relayed, running, message.reason)
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

    def _stopped_error(self) -> SpearError:
        """What an execution cut short by this instance's end is answered."""
        return self._failure or SpearError(ErrorCode.UNAVAILABLE, f"instance {self.spec.instance_id} stopped")

    def _cancelled_early(self, message: Execute) -> bool:
        """Answer *message* CANCELLED if its cancel came before it was taken."""
        if self._early_cancels:
            reason = self._early_cancels.pop(message.call.execution_id, None)
            if reason is not None:
                message.reply.fail(SpearError(ErrorCode.CANCELLED, reason))
                self._parent.post(ExecutionFinished(self.spec.instance_id, message.call.execution_id, message))
                return True
        return False

    async def _execute(self, message: Execute) -> None:
        assert self._instance is not None
        if self._cancelled_early(message):
            return
        call, reply = message.call, message.reply
        self.status = InstanceStatus.RUNNING
        running = _Running(message)
        scope = running.scope = trio.CancelScope()
        self._running[call.execution_id] = running
        try:
            with scope:
                result = await self._instance.execute(call, message.sink, running.logs.append)
                reply.send(Outcome(result, self.spec.instance_id, _ms_since(running.started), running.logs))
        except SpearError as exc:
            reply.fail(_with_logs(exc, running.logs, self.spec.instance_id))
        except Exception as exc:  # a runtime bug must not kill the instance's other calls
            log.exception("%s: execution %s crashed", self.name, call.execution_id)
            reply.fail(SpearError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"))
        finally:
            self._ended(message)

    def _ended(self, message: Execute) -> None:
        """*message*'s execution is over here: answer it if nobody did, and tell the task."""
        call, reply = message.call, message.reply
        running = self._running.get(call.execution_id)
        if running is not None and running.message is message:
            del self._running[call.execution_id]
        if not reply.done:
            reply.fail(self._stopped_error())
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

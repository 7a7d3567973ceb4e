"""The :class:`Node` façade: what an embedding program (and every front end) calls —
invoke, stream, the executions, the tasks, health, drain — each a message to the
manager actor. :func:`~spear_actors.node.open_core` builds one.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final, Protocol

import trio

from ._nursery import background_nursery
from .actors.admission import AdmissionGate
from .actors.mailbox import ActorRef, Reply
from .actors.manager import TaskSeed
from .actors.messages import (
    CancelExecution,
    DeclareTask,
    DeleteTask,
    Drain,
    Invoke,
    ManagerMessage,
    Outcome,
    OutcomeSlot,
    Query,
    Routed,
    WaitExecution,
    WaitExecutions,
)
from .config import NodeConfig
from .deadlines import DeadlineQueue
from .errors import ErrorCode, SpearError
from .metrics import NodeMetrics
from .model import ExecutionMode, ExecutionStatus, InvokeRequest, build_invoke_request
from .protocol.serving import Deferred
from .protocol.transports import Endpoint
from .runtimes.base import StreamSink
from .runtimes.external import ExternalRuntime
from .store import ExecutionStore, MemoryStore

__all__ = ["ExecutionStream", "FrontEnd", "Node"]

log = logging.getLogger(__name__)

# How long past its deadline a caller keeps waiting for the instance's own
# DEADLINE_EXCEEDED before answering it itself (the instance is normally first).
_DEADLINE_GRACE: Final = 1.0
_WATCH_SLICE: Final = 500
"""Most ids of a watch sent to the manager in one message."""


class _Waiting:
    """A SYNC or STREAM caller's wait, in the node's deadline queue once routed."""

    __slots__ = ("execution_id", "outcome")

    def __init__(self, outcome: OutcomeSlot, execution_id: str) -> None:
        self.outcome = outcome
        self.execution_id = execution_id


def _still_waiting(waiting: _Waiting) -> bool:
    return not waiting.outcome.done


class Node:
    """A running node. Get one from :func:`open_node`. Every FunctionService method
    is here, callable in process; the gateway serves the same methods remotely."""

    def __init__(
        self,
        config: NodeConfig,
        manager: ActorRef[ManagerMessage],
        nursery: trio.Nursery,
        admission: AdmissionGate | None = None,
        store: ExecutionStore | None = None,
    ) -> None:
        self.config = config
        self._store = store or MemoryStore()
        self._manager = manager
        self._admission = admission or AdmissionGate()
        self._nursery = nursery
        self._waits = DeadlineQueue[_Waiting](self._wait_expired, _still_waiting)
        """The callers' own deadlines (routed deadline + a grace): one timer for all."""
        self.endpoints: list[Endpoint] = []
        """Gateway endpoints this node listens on (with real ports)."""
        self.metrics = NodeMetrics()
        """This node's Prometheus metrics, updated and served when ``metrics_listen``
        is set."""
        self._counting = config.metrics_listen is not None  # nobody scrapes otherwise
        self.metrics_url: str | None = None
        """Where the metrics are served (the real port for port 0), if they are."""
        self.front_ends: list[FrontEnd] = []
        """What serves this node to the network (stopped first by :meth:`drain`)."""
        self.agent_secrets: ExternalRuntime | None = None
        """Issues the secrets of external agents (set by :func:`open_core`)."""

    # -- invocation -------------------------------------------------------------------
    async def invoke(self, function_name: str, parameters: Any = None, **fields: Any) -> dict[str, Any]:
        """Invoke *function_name* in process, without a network hop.

        *fields* are InvokeFunctionRequest fields (task_name, task_id,
        artifact_spec, execution_mode, context, ...). Returns the response map;
        raises :class:`SpearError` on failure. ASYNC mode returns at once with the
        execution id; STREAM mode must use :meth:`stream`.
        """
        request = InvokeRequest.from_dict(build_invoke_request(function_name, parameters, fields))
        return await self.invoke_request(request)

    async def invoke_request(self, request: InvokeRequest, sink: StreamSink | None = None) -> dict[str, Any]:
        """Run a parsed request (the gateway's entry point). With *sink*, the call is
        a stream: its items go to *sink* and the final response is returned."""
        if not self._counting:
            return await self._run_request(request, sink)
        start = time.perf_counter()
        code = "CANCELLED"  # unless something else is learnt below
        response: dict[str, Any] | None = None
        try:
            response = await self._run_request(request, sink)
            code = "ACCEPTED" if request.execution_mode is ExecutionMode.ASYNC else "OK"
            return response
        except SpearError as exc:
            code = exc.code.value
            raise
        except trio.Cancelled:
            raise
        except Exception:
            code = ErrorCode.INTERNAL.value
            raise
        finally:
            self._count(request, start, code, response)

    def _count(self, request: InvokeRequest, start: float, code: str, response: dict[str, Any] | None) -> None:
        synchronous = request.execution_mode is not ExecutionMode.ASYNC
        self.metrics.invoked(
            request.task_name or request.task_id,
            request.function_name,
            code,
            time.perf_counter() - start if synchronous else None,
            response.get("execution_time_ms") if synchronous and response is not None else None,
        )

    async def invoke_deferred(self, request: InvokeRequest, answer: Deferred) -> Deferred:
        """A SYNC call whose response (or error) goes to *answer* — a gateway's
        deferred answer — once the outcome is in, from the task that sets it: no task
        waits for the call. The answer given up (the client cancelled, left, or its
        deadline passed) cancels the execution. Other modes: :meth:`invoke_request`."""
        if request.execution_mode is not ExecutionMode.SYNC:
            answer.answer(await self.invoke_request(request))
            return answer
        start = time.perf_counter() if self._counting else 0.0
        outcome = OutcomeSlot()
        routing: Reply[Routed] = Reply()
        waiting: _Waiting | None = None

        def on_routed(routed_reply: Reply[Routed]) -> None:
            nonlocal waiting
            routed = routed_reply.value
            if routed is None and routed_reply.error is not None and not outcome.done:
                outcome.fail(routed_reply.error)  # refused: on_outcome finishes it
            elif outcome.done:  # a duplicate's outcome may come before its routing
                finish()
            elif routed is not None:
                waiting = self._watch_deadline(outcome, routed)

        def on_outcome(slot: OutcomeSlot) -> None:
            if routing.done:  # else on_routed finishes it
                finish()

        def finish() -> None:
            """Both the routing and the outcome are in: answer (once)."""
            if waiting is not None:
                self._waits.ended()
            response: dict[str, Any] | None = None
            try:
                error = outcome.error
                routed = routing.value
                if error is None:
                    assert routed is not None and outcome.value is not None
                    response = _response(routed, outcome.value)
                    answer.answer(response)
                else:
                    answer.fail(_with_ids(error, routed))
                code = "OK" if error is None else error.code.value
            except Exception as exc:  # a bug must not reach the task that set the outcome
                log.exception("invoke %s: answering failed", request.function_name)
                answer.fail(SpearError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"))
                code = ErrorCode.INTERNAL.value
            if self._counting:
                self._count(request, start, code, response)

        routing.on_done = on_routed
        outcome.on_outcome = on_outcome
        answer.on_give_up = lambda reason: self._caller_left(routing)
        try:
            self._admit(request, None)
            await self._manager.send(Invoke(request, routing, None, outcome))
        except SpearError as exc:  # refused: nothing was routed
            if self._counting:
                self._count(request, start, exc.code.value, None)
            raise
        return answer

    def _admit(self, request: InvokeRequest, sink: StreamSink | None) -> None:
        """Check *request* (the invocation rules, its mode, the task's admission)."""
        request.validate()
        if sink is not None:
            request.execution_mode = ExecutionMode.STREAM
        elif request.execution_mode is ExecutionMode.STREAM:
            raise SpearError(ErrorCode.INVALID_ARGUMENT, "STREAM mode is served by stream_function, not invoke")
        refusal = self._admission.refusal(request)
        if refusal is not None:  # overloaded task: answered here, at once
            self.metrics.admission_refusals.labels(self.metrics.task_label(request.task_name or request.task_id)).inc()
            raise refusal

    async def _run_request(self, request: InvokeRequest, sink: StreamSink | None) -> dict[str, Any]:
        self._admit(request, sink)
        if request.execution_mode is ExecutionMode.ASYNC:
            routed: Routed = await self._manager.ask(lambda reply: Invoke(request, reply, sink))
            if routed.write_seq:
                # Acknowledged only once its record is durable: an accepted id
                # always has a record, even after a crash (docs/execution-modes.md).
                await self._store.committed(routed.write_seq)
            return _accepted(routed)
        return await self._wait_outcome(request, sink)

    async def _wait_outcome(self, request: InvokeRequest, sink: StreamSink | None) -> dict[str, Any]:
        """A SYNC or STREAM call: the caller's task wakes once, when the outcome is in.

        The manager routes the execution's result into *outcome*, the reply slot made
        here; a routing refusal fails it too (through ``on_done`` of the routing
        reply, which also puts the wait in the node's deadline queue: the routed
        deadline + a grace, in case the instance does not answer it itself)."""
        outcome = OutcomeSlot()
        routing: Reply[Routed] = Reply()
        waiting: _Waiting | None = None

        def on_routed(answer: Reply[Routed]) -> None:
            nonlocal waiting
            routed = answer.value
            if routed is not None:
                waiting = self._watch_deadline(outcome, routed)
            elif answer.error is not None:
                outcome.fail(answer.error)

        routing.on_done = on_routed
        await self._manager.send(Invoke(request, routing, sink, outcome))
        try:
            await outcome.wait()
        except trio.Cancelled:
            self._caller_left(routing)  # e.g. its connection closed
            raise
        except SpearError as exc:
            error = _with_ids(exc, routing.value)
            if error is exc:
                raise
            raise error from None
        finally:
            if waiting is not None:
                self._waits.ended()
        routed = routing.value
        assert routed is not None
        value = outcome.value
        assert value is not None
        return _response(routed, value)

    def _watch_deadline(self, outcome: OutcomeSlot, routed: Routed) -> _Waiting | None:
        """Put a routed caller's wait in the node's deadline queue (the routed deadline
        + a grace, in case the instance does not answer it itself); None when there is
        nothing to watch (no deadline, or answered already)."""
        if routed.deadline == math.inf or outcome.done:
            return None
        waiting = _Waiting(outcome, routed.execution_id)
        self._waits.add(routed.deadline + _DEADLINE_GRACE, waiting, self._nursery)
        return waiting

    def _caller_left(self, routing: Reply[Routed]) -> None:
        """A SYNC or STREAM caller went away: its execution has nobody to answer to,
        so it is cancelled (once routed, if it is not yet)."""
        if routing.value is not None:
            self._cancel(routing.value.execution_id, "caller went away")
        elif not routing.done:
            routing.on_done = self._cancel_when_routed

    def _wait_expired(self, waiting: _Waiting) -> None:
        """A caller's own deadline passed without an answer from the instance."""
        waiting.outcome.fail(SpearError(ErrorCode.DEADLINE_EXCEEDED, "execution did not finish before its deadline"))
        self._cancel(waiting.execution_id, "deadline exceeded")

    def _cancel_when_routed(self, answer: Reply[Routed]) -> None:
        if answer.value is not None:
            self._cancel(answer.value.execution_id, "caller went away")

    @asynccontextmanager
    async def stream(
        self, function_name: str, parameters: Any = None, *, window: int = 16, **fields: Any
    ) -> AsyncIterator[ExecutionStream]:
        """Invoke a streaming function; iterate the yielded object for its items.

        At most *window* items are buffered here: a slow consumer slows the agent.
        Leaving the block early cancels the execution.
        """
        request = InvokeRequest.from_dict(build_invoke_request(function_name, parameters, fields))
        send, receive = trio.open_memory_channel[Any](window)
        stream = ExecutionStream(receive)

        async def run() -> None:
            async with send:
                try:
                    stream.response = await self.invoke_request(request, send.send)
                except SpearError as exc:
                    stream.error = exc

        async with background_nursery() as nursery:
            nursery.start_soon(run)
            yield stream

    def _cancel(self, execution_id: str, reason: str) -> None:
        self._manager.post(CancelExecution(execution_id, reason))

    # -- executions ----------------------------------------------------------------------
    async def get_execution(
        self, execution_id: str, include_result: bool = True, include_logs: bool = False
    ) -> dict[str, Any]:
        """The execution record; NOT_FOUND if unknown or evicted."""
        return await self._query(
            "get_execution", execution_id=execution_id, include_result=include_result, include_logs=include_logs
        )

    async def wait_execution(
        self, execution_id: str, timeout: float | None = None, include_logs: bool = False
    ) -> dict[str, Any]:
        """Wait until the execution finishes (or *timeout* seconds pass) and return its
        record; the record's status says which."""
        if timeout is not None and not (isinstance(timeout, (int, float)) and 0 <= timeout < math.inf):
            raise SpearError(
                ErrorCode.INVALID_ARGUMENT, f"wait_execution: timeout must be a finite number ≥ 0, got {timeout!r}"
            )
        with trio.move_on_after(math.inf if timeout is None else timeout):
            done: Reply[Outcome] = Reply()
            await self._manager.tell(WaitExecution(execution_id, done))
            try:
                await done.wait()
            except SpearError as exc:
                if exc.code is ErrorCode.NOT_FOUND:
                    raise
        return await self.get_execution(execution_id, include_logs=include_logs)

    async def watch_executions(self, execution_ids: list[str], sink: StreamSink) -> dict[str, Any]:
        """Send each execution's record to *sink* as it finishes (an unknown id: a map
        with its ``error``, at once); returns ``{count}``. No task per id: each id is
        one waiter in the registry whose answer lands in one channel, so a large
        watch never holds the loop (the gateway bounds the ids: ``MAX_WATCH_IDS``)."""
        send, receive = trio.open_memory_channel[tuple[str, SpearError | None]](len(execution_ids) or 1)

        def finished(execution_id: str, done: Reply[Outcome]) -> None:
            error = done.error if done.error is not None and done.error.code is ErrorCode.NOT_FOUND else None
            if done.error is not None:
                # its traceback holds the answering frame, which holds this reply: a
                # cycle per id that only a full GC pass (~100 ms at 10,000 ids) frees
                done.error.__traceback__ = None
            try:
                send.send_nowait((execution_id, error))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the watcher has left

        with receive:
            # A slice of ids per manager message: the manager handles each slice in
            # one step and reads the ids it does not hold from the store together.
            for start in range(0, len(execution_ids), _WATCH_SLICE):
                waits: list[WaitExecution] = []
                for execution_id in execution_ids[start : start + _WATCH_SLICE]:
                    done: Reply[Outcome] = Reply()
                    done.on_done = functools.partial(finished, execution_id)
                    waits.append(WaitExecution(execution_id, done))
                await self._manager.tell(WaitExecutions(waits))  # yields: others run
            for _ in execution_ids:
                execution_id, error = await receive.receive()
                if error is None:
                    try:
                        record = await self.get_execution(execution_id)
                    except SpearError as exc:
                        error = exc
                await sink({"execution_id": execution_id, "error": error.to_dict()} if error else record)
        return {"count": len(execution_ids)}

    async def cancel_execution(
        self, execution_id: str, reason: str = "cancelled", force: bool = False
    ) -> dict[str, Any]:
        """Cancel an execution and return its record once it has ended.

        A PENDING execution never starts; a RUNNING one is cancelled in its
        instance (with *force*, or without the agent's confirmation within the
        grace period, the instance is killed and replaced). A finished execution
        is returned unchanged.
        """
        await self._manager.ask(lambda reply: CancelExecution(execution_id, reason, force, reply))
        return await self.wait_execution(execution_id, timeout=self.config.cancel_grace_s + _DEADLINE_GRACE)

    async def list_executions(
        self, task_id: str = "", status_filter: list[str] | None = None, limit: int = 100, start_after: str = ""
    ) -> dict[str, Any]:
        """A page of execution records (without results), oldest first."""
        return await self._query(
            "list_executions", task_id=task_id, status_filter=status_filter, limit=limit, start_after=start_after
        )

    # -- tasks ---------------------------------------------------------------------------
    async def declare_task(self, seed: TaskSeed) -> str:
        """Create a task now (if none has its name); return its id."""
        return await self._manager.ask(lambda reply: DeclareTask(seed, reply))

    async def list_tasks(
        self, prefix: str = "", limit: int = 100, start_after: str = "", scope: str = "node"
    ) -> dict[str, Any]:
        """A page of tasks sorted by name; ``next_start_after`` is the next page's cursor.
        (``scope="cluster"`` is served by the gateway of a cluster node.)"""
        _node_scope(scope)
        return await self._query("list_tasks", prefix=prefix, limit=limit, start_after=start_after)

    async def get_task(
        self, task_id: str, include_executions: bool = False, execution_limit: int = 20
    ) -> dict[str, Any]:
        """A task with its policy, instances and (optionally) recent executions."""
        return await self._query(
            "get_task", task_id=task_id, include_executions=include_executions, execution_limit=execution_limit
        )

    async def delete_task(self, task_id: str, force: bool = False) -> dict[str, Any]:
        """Delete a task once its instances have stopped. Busy and not *force*:
        FAILED_PRECONDITION; with *force*, its executions end CANCELLED."""
        return await self._manager.ask(lambda reply: DeleteTask(task_id, force, reply))

    async def issue_agent_secret(self, task_id: str, ttl: float | None = None) -> dict[str, Any]:
        """A one-time secret with which one agent started elsewhere dials in to become
        an instance of the external task *task_id* (its id or name), good for *ttl*
        seconds (docs/agents.md, "External agents")."""
        if self.agent_secrets is None:
            raise SpearError(ErrorCode.FAILED_PRECONDITION, "this node has no external runtime")
        task = await self._task_by_id_or_name(task_id)
        artifact_type = task["artifact"]["artifact_type"]
        if artifact_type != "external":
            raise SpearError(
                ErrorCode.FAILED_PRECONDITION,
                f"task {task['task_name']} is not external (artifact_type {artifact_type!r}): its agents are "
                "started by the node",
            )
        if task["status"] == "DELETING":
            raise SpearError(ErrorCode.FAILED_PRECONDITION, f"task {task['task_name']} is being deleted")
        return self.agent_secrets.issue(task["task_id"], task["task_name"], ttl)

    async def _task_by_id_or_name(self, task: str) -> dict[str, Any]:
        try:
            return await self.get_task(task)
        except SpearError as exc:
            if exc.code is not ErrorCode.NOT_FOUND:
                raise
        # The first name with the prefix *task* is *task* itself, if it exists.
        page = await self.list_tasks(prefix=task, limit=1)
        if page["tasks"] and page["tasks"][0]["task_name"] == task:
            return await self.get_task(page["tasks"][0]["task_id"])
        raise SpearError(ErrorCode.NOT_FOUND, f"no task has the id or name {task!r}")

    # -- node ------------------------------------------------------------------------------
    async def get_health(self, scope: str = "node") -> dict[str, Any]:
        """Status, uptime, active tasks and instances, running and pending executions.
        (``scope="cluster"`` is served by the gateway of a cluster node.)"""
        _node_scope(scope)
        health: dict[str, Any] = await self._query("get_health")
        health["node_id"] = self.config.node_id
        return health

    async def get_stats(self) -> dict[str, Any]:
        """Per node and per task: counts by status, latency percentiles, instances."""
        return await self._query("get_stats")

    health = get_health

    async def _query(self, method: str, **params: Any) -> dict[str, Any]:
        answer: dict[str, Any] = await self._manager.ask(lambda reply: Query(method, params, reply))
        return answer

    async def drain(self, grace: float | None = None) -> bool:
        """Stop accepting: front ends close their listeners and answer new calls
        UNAVAILABLE, the manager refuses new calls; running calls get up to *grace*
        seconds (default ``shutdown_grace_s``) to finish, and their callers their
        answers; then the front ends close their connections. Returns True if
        everything finished in time. Leaving :func:`open_node` afterwards ends
        whatever is left (UNAVAILABLE, records FAILED)."""
        for front_end in self.front_ends:
            front_end.stop_accepting()
        grace = self.config.shutdown_grace_s if grace is None else grace
        deadline = trio.current_time() + grace
        finished = False
        with trio.move_on_at(deadline):
            await self._manager.ask(lambda reply: Drain("node is shutting down", reply))
            finished = True
        for front_end in self.front_ends:
            await front_end.close(deadline)
        return finished


class FrontEnd(Protocol):
    """What serves the node to the outside (the gateway), as the node's drain sees it."""

    def stop_accepting(self) -> None:
        """Accept no more connections; answer new invocations UNAVAILABLE."""

    async def close(self, deadline: float) -> None:
        """Let the calls being served finish (until *deadline*), then close."""


class ExecutionStream:
    """The items of a streaming execution (from :meth:`Node.stream`), in order.

    Iteration ends after the last item; then :attr:`response` holds the final
    response map, or the execution's error is raised after the items before it.
    """

    def __init__(self, receive: trio.MemoryReceiveChannel[Any]) -> None:
        self._receive = receive
        self.response: dict[str, Any] | None = None
        self.error: SpearError | None = None

    def __aiter__(self) -> ExecutionStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            if self.error is not None:
                raise self.error from None
            raise StopAsyncIteration from None


def _node_scope(scope: str) -> None:
    if scope == "cluster":
        raise SpearError(ErrorCode.FAILED_PRECONDITION, "scope 'cluster' needs a node in a cluster ([cluster] config)")
    if scope != "node":
        raise SpearError(ErrorCode.INVALID_ARGUMENT, f"scope must be 'node' or 'cluster', not {scope!r}")


def _accepted(routed: Routed) -> dict[str, Any]:
    return {
        "success": True,
        "message": "accepted",
        "execution_id": routed.execution_id,
        "task_id": routed.task_id,
        "status": routed.status,
        "status_endpoint": f"get_execution?execution_id={routed.execution_id}",
        "estimated_completion_ms": routed.estimated_completion_ms,
    }


def _with_ids(error: SpearError, routed: Routed | None) -> SpearError:
    """*error* naming the execution it ended (as is, if it was refused before routing:
    nothing ran)."""
    if routed is None:
        return error
    return SpearError(
        error.code, error.message, {**error.details, "execution_id": routed.execution_id, "task_id": routed.task_id}
    )


def _response(routed: Routed, outcome: Outcome) -> dict[str, Any]:
    return {
        "success": True,
        "message": "completed",
        "execution_id": routed.execution_id,
        "task_id": routed.task_id,
        "instance_id": outcome.instance_id,
        "status": ExecutionStatus.COMPLETED.value,
        "result": outcome.result,
        "execution_time_ms": outcome.execution_time_ms,
        "logs": outcome.logs,
    }

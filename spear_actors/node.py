"""The node: runtimes, the manager actor and gateways under one nursery.

Embed it in any trio program::

    async with spear_actors.open_node(NodeConfig()) as node:
        result = await node.invoke("add", [1, 2], task_name="calc",
                                   artifact_spec={"location": "calc_agent.py"})
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import trio

from ._nursery import background_nursery
from .actors.mailbox import ActorRef
from .actors.manager import ManagerActor, TaskSeed
from .actors.messages import CancelExecution, DeclareTask, GetHealth, Invoke, ManagerMessage, Outcome, Routed
from .artifacts import ArtifactStore
from .config import NodeConfig
from .errors import ErrorCode, SpearError
from .model import ExecutionMode, ExecutionStatus, InvokeRequest, build_invoke_request
from .protocol.transports import Endpoint
from .runtimes.base import Runtime, StreamSink
from .runtimes.process import ProcessRuntime

__all__ = ["Node", "open_node"]

log = logging.getLogger(__name__)

# How long past its deadline a caller keeps waiting for the instance's own
# DEADLINE_EXCEEDED before answering it itself (the instance is normally first).
_DEADLINE_GRACE: Final = 1.0


class Node:
    """A running node. Get one from :func:`open_node`."""

    def __init__(self, config: NodeConfig, manager: ActorRef[ManagerMessage], nursery: trio.Nursery) -> None:
        self.config = config
        self._manager = manager
        self._nursery = nursery
        self.endpoints: list[Endpoint] = []
        """Gateway endpoints this node listens on (with real ports)."""

    async def invoke(self, function_name: str, parameters: Any = None, **fields: Any) -> dict[str, Any]:
        """Invoke *function_name* in process, without a network hop.

        *fields* are InvokeFunctionRequest fields (task_name, task_id,
        artifact_spec, execution_mode, context, ...). Returns the response map;
        raises :class:`SpearError` on failure.
        """
        request = InvokeRequest.from_dict(build_invoke_request(function_name, parameters, fields))
        return await self.invoke_request(request)

    async def invoke_request(self, request: InvokeRequest, sink: StreamSink | None = None) -> dict[str, Any]:
        """Run a parsed request (the gateway's entry point). *sink* receives the
        items of a STREAM call."""
        request.validate()
        if request.execution_mode is ExecutionMode.STREAM and sink is None:
            raise SpearError(ErrorCode.INVALID_ARGUMENT, "STREAM mode must use stream_function, not invoke")
        if request.execution_mode is ExecutionMode.ASYNC:
            raise SpearError(ErrorCode.INVALID_ARGUMENT, "ASYNC mode is not supported by this node yet")
        routed: Routed = await self._manager.ask(lambda reply: Invoke(request, reply, sink))
        try:
            with trio.move_on_at(routed.deadline + _DEADLINE_GRACE):
                outcome = await routed.outcome.wait()
                return _response(routed, outcome)
            self._cancel(routed, "deadline exceeded")
            raise SpearError(ErrorCode.DEADLINE_EXCEEDED, "execution did not finish before its deadline")
        except trio.Cancelled:
            self._cancel(routed, "caller went away")
            raise
        except SpearError as exc:
            details = {**exc.details, "execution_id": routed.execution_id, "task_id": routed.task_id}
            raise SpearError(exc.code, exc.message, details) from None

    def _cancel(self, routed: Routed, reason: str) -> None:
        self._manager.post(CancelExecution(routed.execution_id, reason, routed.task_id))

    async def declare_task(self, seed: TaskSeed) -> str:
        """Create a task now (if none has its name); return its id."""
        return await self._manager.ask(lambda reply: DeclareTask(seed, reply))

    async def health(self) -> dict[str, Any]:
        """Status, uptime and counts."""
        health: dict[str, Any] = await self._manager.ask(GetHealth)
        health["node_id"] = self.config.node_id
        return health

    async def listen(self, url: str) -> Endpoint:
        """Start a gateway on *url* (ws://, tcp://, unix://); return the bound endpoint."""
        from .gateway import Gateway

        endpoint: Endpoint = await self._nursery.start(Gateway(self).serve, url)
        self.endpoints.append(endpoint)
        log.info("node %s listening on %s", self.config.node_id, endpoint)
        return endpoint


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


def _runtimes(config: NodeConfig) -> dict[str, Runtime]:
    runtimes: dict[str, Runtime] = {
        "process": ProcessRuntime(
            config.agent_endpoint(),
            start_timeout=config.start_timeout_s,
            stop_grace=config.stop_grace_s,
            heartbeat_interval=config.agent_heartbeat_interval_s,
            heartbeat_timeout=config.agent_heartbeat_timeout_s,
            node_id=config.node_id,
        )
    }
    try:
        from .runtimes.wasm import WasmRuntime
    except ImportError:  # pragma: no cover - the WASM runtime ships with the package
        return runtimes
    runtimes["wasm"] = WasmRuntime(config.data_dir, max_workers=config.wasm_workers)
    return runtimes


@asynccontextmanager
async def open_node(config: NodeConfig | None = None) -> AsyncIterator[Node]:
    """Run a node for the duration of the block.

    On exit every gateway closes, calls still in flight get UNAVAILABLE, every
    instance is stopped (agent processes terminated and reaped) and no task of
    the node is left running.
    """
    config = config or NodeConfig()
    async with background_nursery() as nursery:
        runtimes = _runtimes(config)
        for runtime in runtimes.values():
            await nursery.start(runtime.run)
        manager = ManagerActor(
            runtimes=runtimes,
            artifacts=ArtifactStore(config.data_dir),
            defaults=config.defaults,
            default_timeout_ms=config.default_timeout_ms,
        )
        manager_done = trio.Event()

        async def run_manager(task_status: trio.TaskStatus[ActorRef[ManagerMessage]]) -> None:
            try:
                await manager.run(task_status=task_status)
            finally:
                manager_done.set()

        await nursery.start(run_manager)
        node = Node(config, manager.ref, nursery)
        for declaration in config.tasks:
            await node.declare_task(
                TaskSeed(declaration.name, declaration.description, declaration.artifact, declaration.policy)
            )
        for url in config.listen:
            await node.listen(url)
        try:
            yield node
        finally:
            # Stop the actor tree first (instances stop gracefully, under shield),
            # then the runtimes' listeners and the gateways with the nursery.
            manager.stop()
            with trio.CancelScope(shield=True):
                await manager_done.wait()

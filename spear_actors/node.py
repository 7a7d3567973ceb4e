"""The node: runtimes, the manager actor and gateways under one nursery.

Embed it in any trio program::

    async with spear_actors.open_node(NodeConfig()) as node:
        result = await node.invoke("add", [1, 2], task_name="calc",
                                   artifact_spec={"location": "calc_agent.py"})
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from ._nursery import background_nursery
from .actors.budget import InstanceBudget
from .actors.executions import ExecutionRegistry
from .actors.mailbox import ActorRef
from .actors.manager import ManagerActor, TaskSeed
from .actors.messages import ManagerMessage
from .artifacts import ArtifactStore
from .config import NodeConfig
from .errors import ErrorCode, SpearError
from .model import ArtifactSpec, InstancePolicy
from .node_facade import ExecutionStream, FrontEnd, Node
from .policy import OperatorPolicy
from .runtimes.base import Runtime
from .runtimes.external import ExternalRuntime
from .runtimes.process import ProcessRuntime
from .runtimes.wasm import WasmRuntime
from .store import (
    ExecutionRow,
    ExecutionStore,
    MemoryStore,
    Retention,
    SqliteStore,
    StoredTask,
    node_restarted_error,
    pack,
    unpack,
)

__all__ = ["ExecutionStream", "FrontEnd", "Node", "open_core"]

log = logging.getLogger(__name__)


def _runtimes(config: NodeConfig, policy: OperatorPolicy) -> dict[str, Runtime]:
    agents = ProcessRuntime(
        config.agent_endpoint(),
        start_timeout=config.start_timeout_s,
        stop_grace=config.stop_grace_s,
        heartbeat_interval=config.agent_heartbeat_interval_s,
        heartbeat_timeout=config.agent_heartbeat_timeout_s,
        cancel_grace=config.cancel_grace_s,
        node_id=config.node_id,
        sandbox=policy.sandbox(),
    )
    runtimes: dict[str, Runtime] = {"process": agents}
    runtimes["external"] = ExternalRuntime(
        agents,
        policy.secret_limits(),
        advertise=config.agent_advertise,
        cancel_grace=config.cancel_grace_s,
        sandbox=agents.sandbox,
    )
    runtimes["wasm"] = WasmRuntime(
        config.data_dir,
        max_workers=config.wasm_workers,
        default_timeout_s=config.default_timeout_ms / 1000,
        ceilings=policy.wasm_ceilings(config.wasm_workers),
    )
    return runtimes


@asynccontextmanager
async def open_core(config: NodeConfig | None = None) -> AsyncIterator[Node]:
    """Run a node without network front ends for the duration of the block
    (:func:`spear_actors.open_node` adds its gateways to this).

    On exit calls still in flight get UNAVAILABLE, every instance is stopped (agent
    processes terminated and reaped) and no task of the node is left running.
    """
    config = config or NodeConfig()
    store = _store(config)
    explicit_id = config.node_id
    state = await store.open(explicit_id or f"node-{uuid.uuid4().hex[:8]}", config.max_execution_records)
    if explicit_id and explicit_id != state.node_id and isinstance(store, SqliteStore):
        store.set_identity(explicit_id)
    config.node_id = explicit_id or state.node_id
    if state.aborted:
        log.warning(
            "node %s: %d executions were unfinished when the node last stopped: now FAILED (node_restarted)",
            config.node_id,
            state.aborted,
        )
    registry = ExecutionRegistry(
        config.max_execution_records,
        config.execution_record_ttl_s,
        store=store,
        max_result_bytes=config.max_result_bytes,
        max_result_bytes_total=config.max_retained_result_bytes,
        max_log_bytes=config.max_log_bytes_per_record,
    )
    for row in state.recent:
        registry.restore(row)
    try:
        async with _serving(config, store, registry, state.tasks, state.resubmit) as node:
            yield node
    finally:
        await store.aclose()


def _store(config: NodeConfig) -> ExecutionStore:
    if config.store == "memory":
        return MemoryStore()
    if config.store != "sqlite":
        raise SpearError(
            ErrorCode.INVALID_ARGUMENT, f"config: store must be 'sqlite' or 'memory', not {config.store!r}"
        )
    synchronous = config.store_synchronous.upper()
    if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise SpearError(ErrorCode.INVALID_ARGUMENT, "config: store_synchronous must be OFF, NORMAL, FULL or EXTRA")
    for name in ("store_max_records", "store_max_bytes", "store_max_backlog"):
        if getattr(config, name) < 1:
            raise SpearError(ErrorCode.INVALID_ARGUMENT, f"config: {name} must be >= 1")
    retention = Retention(config.execution_record_ttl_s, config.store_max_records, config.store_max_bytes)
    return SqliteStore(config.data_dir, retention, synchronous=synchronous, max_backlog=config.store_max_backlog)


async def _restore_tasks(node: Node, tasks: list[StoredTask]) -> None:
    """Create the client-created tasks the store kept (their instances start on demand,
    or at once up to min_instances)."""
    for stored in tasks:
        try:
            artifact = ArtifactSpec(**stored.artifact)
            policy = InstancePolicy(**stored.policy)
            seed = TaskSeed(
                stored.task_name,
                stored.description,
                artifact,
                policy,
                stored.task_id,
                persist=True,
                expect_digest=stored.artifact_digest,
            )
            task_id = await node.declare_task(seed)
        except (SpearError, TypeError) as exc:
            log.warning("node: stored task %r (%s) could not be restored: %s", stored.task_name, stored.task_id, exc)
            continue
        if task_id != stored.task_id:
            log.warning(
                "node: stored task %r (%s) not restored: the name belongs to task %s",
                stored.task_name,
                stored.task_id,
                task_id,
            )


async def _run_again(node: Node, store: ExecutionStore, rows: list[ExecutionRow]) -> None:
    """Submit again, under their ids, the ASYNC calls that asked for retries and were
    unfinished when the node died (one retry spent on the death; a fresh deadline).
    One that cannot be submitted is recorded FAILED (node_restarted)."""
    for row in rows:
        request = unpack(row.request)
        try:
            retries = int(request["max_retries"]) - 1
            context = {
                "execution_id": row.execution_id,
                "timeout_ms": request["timeout_ms"],
                "max_retries": max(0, retries),
                "environment": request["environment"],
                "headers": request["headers"],
            }
            await node.invoke(
                request["function_name"],
                request["parameters"],
                task_id=request["task_id"],
                execution_mode="ASYNC",
                context=context,
            )
            log.info("node: execution %s runs again after the restart (%d retries left)", row.execution_id, retries)
        except (SpearError, KeyError, TypeError, ValueError) as exc:
            log.warning("node: execution %s cannot run again after the restart: %s", row.execution_id, exc)
            error = node_restarted_error()
            row.status = "FAILED"
            row.completed_at = time.time()
            row.error = pack(error.to_dict())
            row.request = None
            store.save(row)


@asynccontextmanager
async def _serving(
    config: NodeConfig,
    store: ExecutionStore,
    registry: ExecutionRegistry,
    stored_tasks: list[StoredTask],
    resubmit: list[ExecutionRow],
) -> AsyncIterator[Node]:
    # The exposure-dependent defaults (artifact roots, private fetch targets) are
    # decided once, from the listeners the node starts with.
    policy = config.policy.resolved(config.listen)
    async with background_nursery() as nursery:
        runtimes = _runtimes(config, policy)
        for runtime in runtimes.values():
            await nursery.start(runtime.run)
        manager = ManagerActor(
            runtimes=runtimes,
            artifacts=ArtifactStore(config.data_dir, fetch_rules=policy.fetch_rules()),
            defaults=config.defaults,
            default_timeout_ms=config.default_timeout_ms,
            registry=registry,
            budget=InstanceBudget(config.max_total_instances),
            backoff=(config.start_backoff_s, config.start_backoff_max_s),
            max_running_executions=config.max_running_executions,
            policy=policy,
        )
        manager_done = trio.Event()

        async def run_manager(task_status: trio.TaskStatus[ActorRef[ManagerMessage]]) -> None:
            try:
                await manager.run(task_status=task_status)
            finally:
                manager_done.set()

        await nursery.start(run_manager)
        node = Node(config, manager.ref, nursery, manager.admission, store)
        external = runtimes["external"]
        assert isinstance(external, ExternalRuntime)
        node.agent_secrets = external
        for declaration in config.tasks:
            await node.declare_task(
                TaskSeed(
                    declaration.name, declaration.description, declaration.artifact, declaration.policy, trusted=True
                )
            )
        await _restore_tasks(node, stored_tasks)
        await _run_again(node, store, resubmit)
        try:
            yield node
        finally:
            # Stop the actor tree first (instances stop gracefully, under shield),
            # then the runtimes' listeners and the gateways with the nursery.
            manager.stop()
            with trio.CancelScope(shield=True):
                await manager_done.wait()


def __getattr__(name: str) -> Any:
    # ``from spear_actors.node import open_node`` keeps working; the node itself
    # knows nothing of its front ends (open_node lives in spear_actors.serving)
    if name == "open_node":
        from .serving import open_node

        return open_node
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

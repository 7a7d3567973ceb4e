"""A SYNC invoke over the gateway is a deferred answer (``Node.invoke_deferred``): no
task waits for it, and the answer comes from the task that sets the outcome. These
pin what a waiting task used to give for free: one answer per call, the execution
cancelled when its caller cancels, leaves or runs out of time, duplicate execution
ids answered once routed — and the fast path itself (no task spawned per call)."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest
import trio

import spear_actors
from spear_actors import ErrorCode, SpearError
from spear_actors.model import build_invoke_request
from spear_actors.node import Node

from ..conftest import AGENTS, agent_spec, until_running

BUSY = agent_spec(AGENTS / "busy_agent.py")
POOL = {"max_instances": 2, "max_concurrency": 8}


async def until_status(node: Node, execution_id: str, status: str) -> None:
    with trio.fail_after(10):
        while (await node.get_execution(execution_id))["status"] != status:
            await trio.sleep(0.02)


async def test_duplicate_ids_over_the_wire_run_once_and_all_are_answered(node: Node, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    results: list[dict[str, Any]] = []
    async with spear_actors.connect(str(node.endpoints[0])) as client:

        async def submit() -> None:
            results.append(
                await client.invoke(
                    "record",
                    [str(ledger), "x"],
                    task_name="once",
                    artifact_spec=BUSY,
                    policy=POOL,
                    context={"execution_id": "exec-dup"},
                )
            )

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(submit)
        # finished: the outcome of a duplicate is there before its routing
        again = await client.invoke(
            "record", [str(ledger), "y"], task_name="once", context={"execution_id": "exec-dup"}
        )
    assert ledger.read_text() == "x\n"
    assert [r["result"] for r in results] == ["x"] * 20
    assert again["result"] == "x" and again["execution_id"] == "exec-dup"


async def test_a_caller_that_cancels_its_call_cancels_the_execution(node: Node) -> None:
    async with spear_actors.connect(str(node.endpoints[0])) as client:
        await client.invoke("pid", None, task_name="cc", artifact_spec=BUSY)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: client.invoke("wait", [30], task_name="cc", context={"execution_id": "exec-cc"}))
            await until_running(node, "exec-cc")
            nursery.cancel_scope.cancel()  # a cancel message; the connection stays
        await until_status(node, "exec-cc", "CANCELLED")
        assert (await client.invoke("double", 4, task_name="cc"))["result"] == 8


async def test_a_callers_deadline_ends_the_call_and_cancels_the_execution(node: Node) -> None:
    async with spear_actors.connect(str(node.endpoints[0])) as client:
        await client.invoke("pid", None, task_name="dl", artifact_spec=BUSY)
        request = build_invoke_request("wait", [30], {"task_name": "dl", "context": {"execution_id": "exec-dl"}})
        with trio.fail_after(5), pytest.raises(SpearError) as info:
            await client.call("invoke", request, timeout=0.5)  # the deadline travels as timeout_ms
        assert info.value.code is ErrorCode.DEADLINE_EXCEEDED
        await until_status(node, "exec-dl", "CANCELLED")


async def test_an_error_names_its_execution(node: Node) -> None:
    async with spear_actors.connect(str(node.endpoints[0])) as client:
        with pytest.raises(SpearError) as info:
            await client.invoke("fail_midway", 0, task_name="err", artifact_spec=BUSY, context={"execution_id": "e-1"})
    assert info.value.code is ErrorCode.FUNCTION_ERROR
    assert info.value.details["execution_id"] == "e-1" and info.value.details["task_id"]


class Spawns(trio.abc.Instrument):
    def __init__(self) -> None:
        self.count = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.count += 1


async def test_a_sync_call_over_the_wire_spawns_no_task(node: Node) -> None:
    async with spear_actors.connect(str(node.endpoints[0])) as client:
        await client.invoke("double", 1, task_name="fast", artifact_spec=BUSY)
        spawns = Spawns()
        trio.lowlevel.add_instrument(spawns)
        try:
            for i in range(50):
                assert (await client.invoke("double", i, task_name="fast"))["result"] == 2 * i
        finally:
            trio.lowlevel.remove_instrument(spawns)
    # a task per call (a waiting handler, or the reader's successor) would be >= 50
    assert spawns.count < 10


async def test_a_call_leaves_no_reference_cycle_behind(node: Node) -> None:
    # Callbacks that hold their own reply (closures, partials) are dropped once
    # called: else every call's objects wait for the cyclic GC, whose passes cost
    # more than the rest of the call (docs/performance.md).
    async with spear_actors.connect(str(node.endpoints[0])) as client:
        await client.invoke("double", 1, task_name="gc", artifact_spec=BUSY)
        await node.invoke("double", 1, task_name="gc")
        gc.collect()
        gc.disable()
        try:
            for i in range(100):
                assert (await client.invoke("double", i, task_name="gc"))["result"] == 2 * i
                assert (await node.invoke("double", i, task_name="gc"))["result"] == 2 * i
            unreachable = gc.collect()
        finally:
            gc.enable()
    assert unreachable < 50  # a cycle per call would be >= 200 (typically thousands)

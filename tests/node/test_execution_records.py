"""An execution's record through its states, with real agents.

A call that ends quickly learns where and when it started from its outcome (the task
does not send a note of its own for it); one that runs longer is RUNNING while it
runs; a cancel or the instance's death between the start and the end leaves a record
that says where and when it started.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
import trio

from spear_actors import ErrorCode, SpearError
from spear_actors.node import Node

from ..conftest import AGENTS, agent_spec, until_running

BUSY = agent_spec(AGENTS / "busy_agent.py")
SOLO = {"max_instances": 1, "max_concurrency": 2}


async def test_a_quick_call_is_recorded_with_where_and_when_it_started(node: Node) -> None:
    response = await node.invoke("double", 21, task_name="quick", artifact_spec=BUSY)
    record = await node.get_execution(response["execution_id"])
    assert (record["status"], record["result"]) == ("COMPLETED", 42)
    assert record["instance_id"] == response["instance_id"]
    assert record["created_at"] <= record["started_at"] <= record["completed_at"]
    assert record["execution_time_ms"] == response["execution_time_ms"]

    with pytest.raises(SpearError) as info:
        await node.invoke("fail", {"message": "no"}, task_name="quick-fail", artifact_spec=agent_spec())
    assert info.value.code is ErrorCode.FUNCTION_ERROR
    failed = await node.get_execution(info.value.details["execution_id"])
    assert failed["status"] == "FAILED" and failed["error"]["code"] == "FUNCTION_ERROR"
    assert failed["instance_id"] and failed["started_at"] is not None
    assert failed["started_at"] <= failed["completed_at"] and failed["execution_time_ms"] is not None
    health = await node.get_health()
    assert health["pending_executions"] == 0 and health["running_executions"] == 0


async def test_a_longer_call_is_running_while_it_runs(node: Node) -> None:
    accepted = await node.invoke("wait", [0.5], task_name="long", artifact_spec=BUSY, execution_mode="ASYNC")
    execution_id = accepted["execution_id"]
    await until_running(node, execution_id)
    running = await node.get_execution(execution_id)
    assert running["instance_id"] and running["started_at"] is not None and running["completed_at"] is None
    health = await node.get_health()
    assert health["running_executions"] == 1 and health["pending_executions"] == 0
    listed = (await node.list_executions(status_filter=["RUNNING"]))["executions"]
    assert [r["execution_id"] for r in listed] == [execution_id]
    done = await node.wait_execution(execution_id)
    assert (done["status"], done["result"]) == ("COMPLETED", "waited")
    assert done["started_at"] == running["started_at"] and done["instance_id"] == running["instance_id"]
    assert done["started_at"] <= done["completed_at"]


async def test_a_call_cancelled_between_its_start_and_its_end(node: Node) -> None:
    await node.invoke("double", 1, task_name="cancelled", artifact_spec=BUSY, policy=SOLO)  # warm
    ended: list[Any] = []

    async def call() -> None:
        try:
            await node.invoke("wait", [30], task_name="cancelled", context={"execution_id": "exec-c"})
        except SpearError as exc:
            ended.append(exc.code)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        await until_running(node, "exec-c")
        started = (await node.get_execution("exec-c"))["started_at"]
        record = await node.cancel_execution("exec-c", reason="enough")
    assert ended == [ErrorCode.CANCELLED]
    assert record["status"] == "CANCELLED" and record["error"]["message"] == "enough"
    assert record["started_at"] == started and record["execution_time_ms"] is not None
    health = await node.get_health()
    assert health["pending_executions"] == 0 and health["running_executions"] == 0


async def test_an_instance_dying_between_a_start_and_its_end(node: Node) -> None:
    agent_pid = (await node.invoke("pid", None, task_name="dying", artifact_spec=BUSY, policy=SOLO))["result"]
    ended: list[Any] = []

    async def call() -> None:
        try:
            await node.invoke("wait", [30], task_name="dying", context={"execution_id": "exec-d"})
        except SpearError as exc:
            ended.append(exc.code)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        await until_running(node, "exec-d")
        running = await node.get_execution("exec-d")
        os.kill(agent_pid, signal.SIGKILL)
    assert ended == [ErrorCode.INSTANCE_FAILED]
    record = await node.get_execution("exec-d")
    assert record["status"] == "FAILED" and record["error"]["code"] == "INSTANCE_FAILED"
    assert record["started_at"] == running["started_at"] and record["instance_id"] == running["instance_id"]
    # the task replaced the instance: the next call runs
    again = await node.invoke("double", 2, task_name="dying")
    assert again["result"] == 4 and again["instance_id"] != running["instance_id"]


async def test_a_call_run_again_elsewhere_records_its_first_start_and_its_last_instance(node: Node) -> None:
    agent_pid = (await node.invoke("pid", None, task_name="retried", artifact_spec=BUSY, policy=SOLO))["result"]
    answers: list[Any] = []

    async def call() -> None:
        answers.append(
            await node.invoke("wait", [0.3], task_name="retried", context={"execution_id": "exec-r", "max_retries": 1})
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        await until_running(node, "exec-r")
        first = await node.get_execution("exec-r")
        os.kill(agent_pid, signal.SIGKILL)
    [response] = answers
    assert response["result"] == "waited" and response["instance_id"] != first["instance_id"]
    record = await node.get_execution("exec-r")
    assert record["status"] == "COMPLETED" and record["instance_id"] == response["instance_id"]
    assert record["started_at"] == first["started_at"] <= record["completed_at"]

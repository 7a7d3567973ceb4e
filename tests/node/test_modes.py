"""ASYNC and STREAM modes, cancellation and the rest of the FunctionService API,
end to end over websocket against real agent processes."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

import pytest
import trio

import spear_actors
from spear_actors import ErrorCode, SpearError
from spear_actors.actors.manager import TaskSeed
from spear_actors.model import ArtifactSpec, InstancePolicy
from spear_actors.node import Node, open_node

from ..conftest import AGENTS, agent_spec, fast_config, until_running

BUSY = agent_spec(AGENTS / "busy_agent.py")
POOL = {"max_instances": 2, "max_concurrency": 4}


async def test_async_answers_at_once_and_the_result_is_waited_for(node: Node) -> None:
    async with spear_actors.connect(str(node.endpoints[0])) as client:
        accepted = await client.invoke("wait", [0.3], task_name="a", artifact_spec=BUSY, execution_mode="ASYNC")
        assert accepted["status"] in ("PENDING", "RUNNING")
        execution_id = accepted["execution_id"]
        assert accepted["status_endpoint"] == f"get_execution?execution_id={execution_id}"
        assert accepted["estimated_completion_ms"] is None  # nothing observed yet
        early = await client.get_execution(execution_id)
        assert early["status"] in ("PENDING", "RUNNING")
        done = await client.wait_execution(execution_id)
        assert done["status"] == "COMPLETED" and done["result"] == "waited"
        assert done["execution_time_ms"] >= 250
        assert done["started_at"] <= done["completed_at"]
        again = await client.invoke("wait", [0.01], task_name="a", execution_mode="ASYNC")
        assert again["estimated_completion_ms"] >= 250  # derived from the observed latency


async def test_wait_execution_times_out_with_the_current_status(node: Node) -> None:
    accepted = await node.invoke("wait", [5], task_name="w", artifact_spec=BUSY, execution_mode="ASYNC")
    record = await node.wait_execution(accepted["execution_id"], timeout=0.2)
    assert record["status"] in ("PENDING", "RUNNING")
    await node.cancel_execution(accepted["execution_id"])


async def test_async_execution_survives_its_client_disconnecting(node: Node) -> None:
    async with spear_actors.connect(str(node.endpoints[0])) as client:
        accepted = await client.invoke("wait", [0.3], task_name="s", artifact_spec=BUSY, execution_mode="ASYNC")
    record = await node.wait_execution(accepted["execution_id"])
    assert record["status"] == "COMPLETED"


async def test_subscribers_get_completion_notices(node: Node) -> None:
    ids = []
    for seconds in (0.3, 0.1, 0.2):
        accepted = await node.invoke(
            "wait", [seconds], task_name="n", artifact_spec=BUSY, policy=POOL, execution_mode="ASYNC"
        )
        ids.append(accepted["execution_id"])
    async with spear_actors.connect(str(node.endpoints[0])) as client, client.watch_executions(ids) as notices:
        seen = [notice async for notice in notices]
    assert sorted(n["execution_id"] for n in seen) == sorted(ids)
    assert all(n["status"] == "COMPLETED" for n in seen)


async def test_stream_delivers_chunks_in_order_then_the_final_status(node: Node) -> None:
    async with spear_actors.connect(str(node.endpoints[0])) as client:
        async with client.stream("count", [50], task_name="c", artifact_spec=agent_spec()) as items:
            chunks = [chunk async for chunk in items]
        assert chunks == list(range(50))
        assert items.result["status"] == "COMPLETED"
        assert items.result["result"] == {"counted": 50}
        async with client.stream("async_count", [5], task_name="ac", artifact_spec=BUSY) as items:
            assert [chunk async for chunk in items] == [{"i": i} for i in range(5)]


async def test_stream_error_arrives_after_the_chunks_already_sent(node: Node) -> None:
    async with spear_actors.connect(str(node.endpoints[0])) as client:
        received = []
        with pytest.raises(SpearError) as info:
            async with client.stream("fail_midway", [3], task_name="f", artifact_spec=BUSY) as items:
                async for chunk in items:
                    received.append(chunk)
    assert received == [0, 1, 2]
    assert info.value.code is ErrorCode.FUNCTION_ERROR
    assert "failed after 3 items" in info.value.message


async def test_in_process_stream(node: Node) -> None:
    async with node.stream("count", [4], task_name="c", artifact_spec=agent_spec()) as items:
        assert [chunk async for chunk in items] == [0, 1, 2, 3]
    assert items.response is not None and items.response["result"] == {"counted": 4}


async def test_invoke_in_stream_mode_names_stream_function(node: Node) -> None:
    with pytest.raises(SpearError) as info:
        await node.invoke("count", [3], task_name="c", artifact_spec=agent_spec(), execution_mode="STREAM")
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    assert "stream_function" in info.value.message


async def test_a_slow_consumer_bounds_how_far_the_agent_runs_ahead(node: Node, tmp_path: Path) -> None:
    progress = tmp_path / "progress"
    async with (
        spear_actors.connect(str(node.endpoints[0])) as client,
        client.stream("produce", [1000, str(progress)], task_name="p", artifact_spec=BUSY, window=2) as items,
    ):
        first = await items.__anext__()
        assert first == 0
        await trio.sleep(1.0)  # the agent runs free for a second while we do not read
        produced = int(progress.read_text())
    # Client window 2 + node↔agent window 16 + a chunk in each hand-off: never 1000.
    assert produced < 30, produced


async def test_duplicate_execution_ids_run_the_function_once(node: Node, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    results = []

    async def submit() -> None:
        response = await node.invoke(
            "record",
            [str(ledger), "x"],
            task_name="once",
            artifact_spec=BUSY,
            policy=POOL,
            context={"execution_id": "exec-fixed"},
        )
        results.append(response)

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(submit)
    assert ledger.read_text() == "x\n"
    assert len(results) == 20
    assert {r["execution_id"] for r in results} == {"exec-fixed"}
    assert all(r["result"] == "x" for r in results)
    # And after it finished, the same id answers the same result without running.
    again = await node.invoke("record", [str(ledger), "y"], task_name="once", context={"execution_id": "exec-fixed"})
    assert again["result"] == "x" and ledger.read_text() == "x\n"


async def test_10000_async_executions_all_finish_and_are_queryable(tmp_path: Path, no_leaked_processes: None) -> None:
    config = fast_config(tmp_path, max_execution_records=20_000)
    config.defaults = InstancePolicy(
        min_instances=0, max_instances=4, max_concurrency=16, idle_timeout_s=300.0, max_pending=20_000
    )
    async with open_node(config) as node:
        ids = []
        for i in range(10_000):
            accepted = await node.invoke("double", i, task_name="many", artifact_spec=BUSY, execution_mode="ASYNC")
            ids.append(accepted["execution_id"])
        for i, execution_id in enumerate(ids):
            record = await node.wait_execution(execution_id)
            assert record["status"] == "COMPLETED" and record["result"] == 2 * i
        listed: list[dict[str, Any]] = []
        cursor = ""
        while True:
            page = await node.list_executions(
                task_id=listed[0]["task_id"] if listed else "", limit=1000, start_after=cursor
            )
            listed.extend(page["executions"])
            cursor = page["next_start_after"]
            if not cursor:
                break
        assert [r["execution_id"] for r in listed] == ids
        health = await node.get_health()
        assert health["pending_executions"] == 0 and health["running_executions"] == 0


async def test_cancel_a_pending_execution_it_never_starts(node: Node, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    solo = {"max_instances": 1, "max_concurrency": 1}
    busy = await node.invoke("wait", [1.0], task_name="q", artifact_spec=BUSY, policy=solo, execution_mode="ASYNC")
    queued = await node.invoke("record", [str(ledger), "ran"], task_name="q", execution_mode="ASYNC")
    record = await node.cancel_execution(queued["execution_id"], reason="changed my mind")
    assert record["status"] == "CANCELLED"
    assert record["started_at"] is None
    assert record["error"]["message"] == "changed my mind"
    assert (await node.wait_execution(busy["execution_id"]))["status"] == "COMPLETED"
    assert not ledger.exists()


async def test_cancel_a_running_sync_execution(node: Node) -> None:
    outcome: dict[str, Any] = {}

    async def caller() -> None:
        try:
            await node.invoke("wait", [30], task_name="rs", artifact_spec=BUSY, context={"execution_id": "exec-rs"})
        except SpearError as exc:
            outcome["error"] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller)
        await until_running(node, "exec-rs")
        record = await node.cancel_execution("exec-rs")
    assert record["status"] == "CANCELLED"
    assert outcome["error"].code is ErrorCode.CANCELLED
    # Cancelling a finished execution returns it unchanged.
    assert (await node.cancel_execution("exec-rs"))["status"] == "CANCELLED"


async def test_cancel_a_running_async_execution_and_every_waiter_learns_it(node: Node) -> None:
    accepted = await node.invoke("async_wait", [30], task_name="ra", artifact_spec=BUSY, execution_mode="ASYNC")
    execution_id = accepted["execution_id"]
    await until_running(node, execution_id)
    waiters: list[dict[str, Any]] = []

    async def waiter() -> None:
        waiters.append(await node.wait_execution(execution_id))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(waiter)
        await trio.sleep(0.05)
        await node.cancel_execution(execution_id)
    assert [w["status"] for w in waiters] == ["CANCELLED"] * 3
    # The instance confirmed and stays in service.
    assert (await node.invoke("double", 4, task_name="ra"))["result"] == 8


async def test_cancel_a_running_stream(node: Node) -> None:
    received = []
    async with spear_actors.connect(str(node.endpoints[0])) as client:
        stream = client.stream(
            "ticking", [1000, 0.02], task_name="rt", artifact_spec=BUSY, context={"execution_id": "exec-stream"}
        )
        with pytest.raises(SpearError) as info:
            async with stream as items:
                async for chunk in items:
                    received.append(chunk)
                    if chunk == 3:
                        await node.cancel_execution("exec-stream")
    assert info.value.code is ErrorCode.CANCELLED
    assert received[:4] == [0, 1, 2, 3] and len(received) < 50
    assert (await node.get_execution("exec-stream"))["status"] == "CANCELLED"


async def test_an_agent_that_ignores_cancel_is_killed_and_replaced(tmp_path: Path, no_leaked_processes: None) -> None:
    deaf = agent_spec(AGENTS / "deaf_agent.py")
    async with open_node(fast_config(tmp_path, cancel_grace_s=0.5)) as node:
        first = await node.invoke("hello", None, task_name="deaf", artifact_spec=deaf)
        accepted = await node.invoke("block", [30], task_name="deaf", execution_mode="ASYNC")
        await until_running(node, accepted["execution_id"])
        record = await node.cancel_execution(accepted["execution_id"])
        assert record["status"] == "CANCELLED"
        after = await node.invoke("hello", None, task_name="deaf")
        assert after["instance_id"] != first["instance_id"]


async def test_an_agent_that_ignores_a_stream_cancel_is_killed_and_replaced(
    tmp_path: Path, no_leaked_processes: None
) -> None:
    deaf = agent_spec(AGENTS / "deaf_agent.py")
    async with open_node(fast_config(tmp_path, cancel_grace_s=0.5)) as node:
        first = await node.invoke("hello", None, task_name="deaf", artifact_spec=deaf)
        with pytest.raises(SpearError) as info:
            async with node.stream(
                "ticks", [10_000], task_name="deaf", context={"execution_id": "exec-deaf-stream"}
            ) as items:
                async for chunk in items:
                    if chunk == 2:
                        await node.cancel_execution("exec-deaf-stream")
        assert info.value.code is ErrorCode.CANCELLED
        after = await node.invoke("hello", None, task_name="deaf")
        assert after["instance_id"] != first["instance_id"]


async def test_forced_cancel_kills_the_instance_at_once(node: Node) -> None:
    first = await node.invoke("pid", None, task_name="fk", artifact_spec=BUSY)
    accepted = await node.invoke("spin", [30], task_name="fk", execution_mode="ASYNC")
    await until_running(node, accepted["execution_id"])
    record = await node.cancel_execution(accepted["execution_id"], force=True)
    assert record["status"] == "CANCELLED"
    with trio.fail_after(5):
        while os.path.exists(f"/proc/{first['result']}") and _state(first["result"]) != "Z":
            await trio.sleep(0.02)
    assert (await node.invoke("pid", None, task_name="fk"))["result"] != first["result"]


async def test_client_disconnect_cancels_its_sync_call(node: Node) -> None:
    async with spear_actors.connect(str(node.endpoints[0])) as client:
        await client.invoke("pid", None, task_name="dc", artifact_spec=BUSY)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: client.invoke("wait", [30], task_name="dc", context={"execution_id": "exec-dc"}))
            await until_running(node, "exec-dc")
            nursery.cancel_scope.cancel()
        # leaving the block closes the connection with the call abandoned
    with trio.fail_after(5):
        while (await node.get_execution("exec-dc"))["status"] != "CANCELLED":
            await trio.sleep(0.02)


async def test_retention_evicts_the_oldest_finished_records(tmp_path: Path, no_leaked_processes: None) -> None:
    # The memory store: what leaves memory is gone (tests/store covers the disk's retention).
    async with open_node(fast_config(tmp_path, max_execution_records=5, store="memory")) as node:
        ids = [(await node.invoke("double", i, task_name="r", artifact_spec=BUSY))["execution_id"] for i in range(8)]
        await node.wait_execution(ids[-1])  # its record is final (the caller may hear first)
        for execution_id in ids[:3]:
            with pytest.raises(SpearError) as info:
                await node.get_execution(execution_id)
            assert info.value.code is ErrorCode.NOT_FOUND
        for execution_id in ids[3:]:
            assert (await node.get_execution(execution_id))["status"] == "COMPLETED"


async def test_pagination_over_1000_tasks(node: Node) -> None:
    spec = ArtifactSpec(location=str(AGENTS / "busy_agent.py"))
    for i in range(1000):
        await node.declare_task(TaskSeed(f"t{i:04d}", "", spec, InstancePolicy()))
    names: list[str] = []
    cursor = ""
    async with spear_actors.connect(str(node.endpoints[0])) as client:
        while True:
            page = await client.list_tasks(limit=128, start_after=cursor)
            names.extend(task["task_name"] for task in page["tasks"])
            cursor = page["next_start_after"]
            if not cursor:
                break
        assert names == [f"t{i:04d}" for i in range(1000)]
        assert len((await client.list_tasks(prefix="t09"))["tasks"]) == 100


async def test_get_task_and_delete_task(node: Node) -> None:
    first = await node.invoke("pid", None, task_name="d", artifact_spec=BUSY)
    task_id = first["task_id"]
    accepted = await node.invoke("wait", [30], task_name="d", execution_mode="ASYNC")
    await until_running(node, accepted["execution_id"])
    task = await node.get_task(task_id, include_executions=True)
    assert task["task_name"] == "d" and task["instances"][0]["status"] == "RUNNING"
    assert [e["execution_id"] for e in task["executions"]][-1] == accepted["execution_id"]
    with pytest.raises(SpearError) as info:
        await node.delete_task(task_id)
    assert info.value.code is ErrorCode.FAILED_PRECONDITION
    assert (await node.delete_task(task_id, force=True))["deleted"] is True
    assert (await node.get_execution(accepted["execution_id"]))["status"] == "CANCELLED"
    assert not os.path.exists(f"/proc/{first['result']}")
    with pytest.raises(SpearError) as info:
        await node.get_task(task_id)
    assert info.value.code is ErrorCode.NOT_FOUND


async def test_list_executions_filters_and_stats(node: Node) -> None:
    await node.invoke("double", 1, task_name="st", artifact_spec=BUSY)
    with pytest.raises(SpearError):
        await node.invoke("fail_midway", [0], task_name="st")
    failed = await node.list_executions(status_filter=["FAILED"])
    assert [e["function_name"] for e in failed["executions"]] == ["fail_midway"]
    stats = await node.get_stats()
    assert stats["node"]["counts"]["COMPLETED"] == 1 and stats["node"]["counts"]["FAILED"] == 1
    (task_stats,) = stats["tasks"].values()
    assert task_stats["latency_ms"]["p50"] is not None and task_stats["instances"] == 1
    health = await node.get_health()
    assert health["tasks"] == 1 and health["instances"] == 1


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _open_descriptors() -> dict[str, int]:
    """Open descriptors of this process by kind (pipe, socket, anon_inode, file)."""
    kinds: dict[str, int] = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        kind = target.split(":", 1)[0] if ":" in target else "file"
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


async def test_forced_cancels_close_the_killed_instances_descriptors_and_refill_the_pool(
    tmp_path: Path, no_leaked_processes: None
) -> None:
    policy = {"min_instances": 4, "max_instances": 4, "max_concurrency": 1}
    gc.disable()  # descriptors must be closed when the instance ends, not by a collection
    try:
        async with open_node(fast_config(tmp_path, store="memory")) as node:
            task_id = (await node.invoke("pid", None, task_name="fk4", artifact_spec=BUSY, policy=policy))["task_id"]

            async def ready_instances() -> int:
                instances = (await node.get_task(task_id))["instances"]
                return sum(1 for i in instances if i["status"] in ("READY", "RUNNING"))

            async def pool_full() -> None:
                with trio.fail_after(30):
                    while await ready_instances() != 4 or len((await node.get_task(task_id))["instances"]) != 4:
                        await trio.sleep(0.02)

            await pool_full()
            baseline = _open_descriptors()
            for i in range(5):
                accepted = await node.invoke(
                    "wait", [30], task_id=task_id, execution_mode="ASYNC", context={"execution_id": f"fk4-{i}"}
                )
                await until_running(node, accepted["execution_id"])
                record = await node.cancel_execution(accepted["execution_id"], force=True)
                assert record["status"] == "CANCELLED", (i, record)
                await pool_full()  # the killed instance was replaced
            # With the collector off, only an explicit close brings the count back
            # (agent sockets close as their connection sees EOF, a moment after the kill).
            with trio.fail_after(10):
                while _open_descriptors() != baseline:
                    await trio.sleep(0.02)
    finally:
        gc.enable()

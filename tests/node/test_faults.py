"""Pools, scheduling and faults under load, with real agent processes."""

from __future__ import annotations

import os
import random
import signal
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import trio

from spear_actors import ErrorCode, SpearError
from spear_actors.actors.manager import TaskSeed
from spear_actors.model import ArtifactSpec, InstancePolicy
from spear_actors.node import Node, open_node

from ..conftest import AGENTS, agent_spec, child_pids, fast_config, until_running

BUSY = agent_spec(AGENTS / "busy_agent.py")


async def _instances(node: Node, task_id: str) -> list[dict[str, Any]]:
    return list((await node.get_task(task_id))["instances"])


async def _until(predicate: Any, seconds: float = 15.0) -> None:
    with trio.fail_after(seconds):
        while not await predicate():
            await trio.sleep(0.02)


async def test_2000_calls_while_agents_are_killed_at_random(tmp_path: Path, no_leaked_processes: None) -> None:
    random.seed(7)
    policy = {"min_instances": 2, "max_instances": 4, "max_concurrency": 8, "max_pending": 5000}
    answers: list[Any] = []
    async with open_node(fast_config(tmp_path)) as node:
        first = await node.invoke("double", 0, task_name="chaos", artifact_spec=BUSY, policy=policy)
        task_id = first["task_id"]

        async def call(i: int) -> None:
            try:
                response = await node.invoke(
                    "wait", [0.02], task_id=task_id, context={"max_retries": i % 2, "timeout_ms": 20_000}
                )
                answers.append(response["result"])
            except SpearError as exc:
                answers.append(exc.code)

        async def killer() -> None:
            for _ in range(8):
                await trio.sleep(0.15)
                victims = sorted(child_pids())
                if victims:
                    os.kill(random.choice(victims), signal.SIGKILL)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(killer)
            for i in range(2000):
                nursery.start_soon(call, i)
        # Exactly one terminal answer each. A kill fails only the calls running on
        # that instance (at most max_concurrency = 8 of them, fewer if they had a
        # retry left); a killed start fails no call (they wait for the next start),
        # and kills from outside never make the task DEGRADED.
        assert len(answers) == 2000
        codes = {a for a in answers if isinstance(a, ErrorCode)}
        assert codes <= {ErrorCode.INSTANCE_FAILED}, codes
        assert answers.count("waited") >= 2000 - 8 * 8

        async def recovered() -> bool:
            ready = [i for i in await _instances(node, task_id) if i["status"] in ("READY", "RUNNING")]
            return len(ready) >= 2

        await _until(recovered)
        health = await node.get_health()
        assert health["pending_executions"] == 0 and health["running_executions"] == 0


async def test_retries_hide_an_instance_failure(node: Node) -> None:
    policy = {"max_instances": 2, "max_concurrency": 1}
    victim = (await node.invoke("pid", None, task_name="retry", artifact_spec=BUSY, policy=policy))["result"]
    outcome: dict[str, Any] = {}

    async def call() -> None:
        outcome["response"] = await node.invoke(
            "wait", [0.5], task_name="retry", context={"max_retries": 1, "execution_id": "exec-retry"}
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        await until_running(node, "exec-retry")
        first_instance = (await node.get_execution("exec-retry"))["instance_id"]
        os.kill(victim, signal.SIGKILL)
    assert outcome["response"]["result"] == "waited"  # ran again, on another instance
    assert outcome["response"]["instance_id"] != first_instance


async def test_a_hung_agent_is_detected_by_heartbeat_and_replaced(tmp_path: Path, no_leaked_processes: None) -> None:
    config = fast_config(tmp_path, agent_heartbeat_interval_s=0.2, agent_heartbeat_timeout_s=1.0)
    async with open_node(config) as node:
        first = await node.invoke("pid", None, task_name="hung", artifact_spec=BUSY, policy={"min_instances": 1})
        os.kill(first["result"], signal.SIGSTOP)  # alive, but answers nothing, not even pings
        start = trio.current_time()
        with pytest.raises(SpearError) as info:
            await node.invoke("wait", [0.1], task_name="hung", context={"timeout_ms": 30_000})
        assert info.value.code is ErrorCode.INSTANCE_FAILED
        assert "heartbeat" in info.value.message
        assert trio.current_time() - start < 5  # at the heartbeat timeout, not the call's 30 s deadline
        replacement = await node.invoke("pid", None, task_name="hung")
        assert replacement["result"] != first["result"]
        assert not os.path.exists(f"/proc/{first['result']}")


async def test_a_busy_agent_that_answers_pings_is_left_alone(tmp_path: Path, no_leaked_processes: None) -> None:
    config = fast_config(tmp_path, agent_heartbeat_interval_s=0.2, agent_heartbeat_timeout_s=0.8)
    async with open_node(config) as node:
        first = await node.invoke("pid", None, task_name="busy", artifact_spec=BUSY)
        response = await node.invoke("spin", [2.5], task_name="busy")  # CPU-bound, 3x the timeout
        assert response["result"] == "spun"
        assert response["instance_id"] == first["instance_id"]


async def test_an_idle_agent_that_stops_answering_pings_is_failed_too(
    tmp_path: Path, no_leaked_processes: None
) -> None:
    config = fast_config(tmp_path, agent_heartbeat_interval_s=0.2, agent_heartbeat_timeout_s=1.0)
    async with open_node(config) as node:
        first = await node.invoke("pid", None, task_name="idle", artifact_spec=BUSY)
        os.kill(first["result"], signal.SIGSTOP)

        async def gone() -> bool:
            return not await _instances(node, first["task_id"])

        await _until(gone, 5)
        assert not os.path.exists(f"/proc/{first['result']}")


async def test_admission_control_under_overload_and_recovery(node: Node) -> None:
    policy = {"max_instances": 1, "max_concurrency": 1, "max_pending": 5}
    await node.invoke("pid", None, task_name="adm", artifact_spec=BUSY, policy=policy)
    # The only slot is held until the overload is over: nothing queued can finish
    # meanwhile, however slow the machine.
    held = await node.invoke("wait", [60], task_name="adm", execution_mode="ASYNC")
    await until_running(node, held["execution_id"])
    outcomes: list[Any] = []

    async def call() -> None:
        try:
            outcomes.append((await node.invoke("wait", [0.01], task_name="adm"))["result"])
        except SpearError as exc:
            assert exc.code is ErrorCode.RESOURCE_EXHAUSTED
            assert exc.details["retry_after_ms"] > 0
            outcomes.append(exc.code)

    async with trio.open_nursery() as nursery:
        for _ in range(30):
            nursery.start_soon(call)

        async def refused() -> bool:
            return outcomes.count(ErrorCode.RESOURCE_EXHAUSTED) == 25

        # 25 refusals while the slot is still held: answered at once, not after queueing.
        await _until(refused)
        assert (await node.get_task(held["task_id"]))["pending"] == 5
        await node.cancel_execution(held["execution_id"])
    assert outcomes.count("waited") == 5  # the five that waited ran once the slot was free
    assert outcomes.count(ErrorCode.RESOURCE_EXHAUSTED) == 25
    assert (await node.invoke("wait", [0.01], task_name="adm"))["result"] == "waited"  # load dropped


async def test_node_wide_caps(tmp_path: Path, no_leaked_processes: None) -> None:
    async with open_node(fast_config(tmp_path, max_total_instances=2, max_running_executions=3)) as node:
        await node.invoke("pid", None, task_name="a", artifact_spec=BUSY)
        await node.invoke("pid", None, task_name="b", artifact_spec=BUSY)
        with pytest.raises(SpearError) as info:  # a third task would need a third instance
            await node.invoke("pid", None, task_name="c", artifact_spec=BUSY)
        assert info.value.code is ErrorCode.RESOURCE_EXHAUSTED
        busy = [await node.invoke("wait", [5], task_name="a", execution_mode="ASYNC") for _ in range(3)]
        with pytest.raises(SpearError) as info:
            await node.invoke("pid", None, task_name="b")
        assert info.value.code is ErrorCode.RESOURCE_EXHAUSTED
        assert "max_running_executions" in info.value.message
        for accepted in busy:
            await node.cancel_execution(accepted["execution_id"])


async def test_crash_looping_artifact_degrades_and_fails_fast(tmp_path: Path, no_leaked_processes: None) -> None:
    crasher = tmp_path / "crash.py"
    crasher.write_text("import sys\nprint('broken on purpose', file=sys.stderr)\nsys.exit(3)\n")
    async with open_node(fast_config(tmp_path, start_backoff_s=0.5)) as node:
        # A failed start does not fail the waiting call: it waits out the back-off
        # (0.5 s, then 1 s) for the next start, until the third failure in a row
        # makes the task DEGRADED, which fails it with the start error.
        with pytest.raises(SpearError) as first:
            await node.invoke("x", None, task_name="crash", artifact_spec=agent_spec(crasher))
        assert first.value.code is ErrorCode.UNAVAILABLE
        assert "DEGRADED after 3 failed starts" in first.value.message
        assert "exited with code 3" in first.value.message
        # ... and after three in a row the task is DEGRADED: calls fail fast (2 s).
        starts_before = len(child_pids())
        for _ in range(5):
            with pytest.raises(SpearError) as again:
                await node.invoke("x", None, task_name="crash")
            assert again.value.code is ErrorCode.UNAVAILABLE
            assert "DEGRADED" in again.value.message and "broken on purpose" in again.value.details["stderr_tail"]
            assert again.value.details["retry_after_ms"] > 0
        assert len(child_pids()) == starts_before  # no spawn loop
        task = (await node.list_tasks())["tasks"][0]
        info = await node.get_task(task["task_id"])
        assert info["last_start_error"]["code"] == "INSTANCE_FAILED"


async def test_a_call_waits_through_failed_starts_until_its_deadline(tmp_path: Path, no_leaked_processes: None) -> None:
    crasher = tmp_path / "crash.py"
    crasher.write_text("import sys\nsys.exit(3)\n")
    async with open_node(fast_config(tmp_path, start_backoff_s=5.0)) as node:
        with pytest.raises(SpearError) as info:
            await node.invoke(
                "x", None, task_name="crash", artifact_spec=agent_spec(crasher), context={"timeout_ms": 1000}
            )
        # Its deadline came during the back-off: it says so, with the start error.
        assert info.value.code is ErrorCode.DEADLINE_EXCEEDED
        assert "last start error" in info.value.message and "exited with code 3" in info.value.message


async def test_killing_the_replacement_before_it_dials_back_fails_no_queued_call(
    tmp_path: Path, no_leaked_processes: None
) -> None:
    gate = tmp_path / "gate"
    spec = agent_spec(AGENTS / "gated_agent.py", env={"START_GATE": str(gate)})
    policy = {"min_instances": 0, "max_instances": 1, "max_concurrency": 1, "max_pending": 1000}
    async with open_node(fast_config(tmp_path, start_backoff_s=0.2)) as node:
        first = await node.invoke("pid", None, task_name="gated", artifact_spec=spec, policy=policy)
        task_id = first["task_id"]
        answers: list[Any] = []

        async def call(i: int) -> None:
            context = {"max_retries": 3, "timeout_ms": 60_000, "execution_id": f"q-{i}"}
            try:
                answers.append((await node.invoke("wait", [0.005], task_id=task_id, context=context))["result"])
            except SpearError as exc:
                answers.append(exc)

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(call, i)

            async def busy() -> bool:
                return bool((await node.get_task(task_id))["running"])

            await _until(busy)
            gate.touch()  # the replacement will not dial back until the gate opens
            os.kill(first["result"], signal.SIGKILL)

            # Three replacements in a row are killed before they dial back: three
            # failed starts, which back off but, killed from outside, never make the
            # task DEGRADED; the queued calls wait for the fourth.
            killed = {first["result"]}
            for attempt in range(3):

                async def replacement_started() -> bool:
                    return bool(child_pids() - killed)

                await _until(replacement_started)
                (replacement,) = child_pids() - killed
                if attempt == 2:
                    gate.unlink()
                os.kill(replacement, signal.SIGKILL)  # killed before it dialed back: a failed start
                killed.add(replacement)
        assert answers == ["waited"] * 200, [a for a in answers if a != "waited"][:3]
        info = await node.get_task(task_id)
        assert info["start_failures"] == 0 and info["status"] == "ACTIVE"  # a later start succeeded


async def test_10000_idle_tasks_stay_small(node: Node) -> None:
    spec = ArtifactSpec(location=str(AGENTS / "busy_agent.py"))
    await node.declare_task(TaskSeed("warmup", "", spec, InstancePolicy()))
    tracemalloc.start()  # traced for the first thousand (tracing is slow), then the rest
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1_000):
            await node.declare_task(TaskSeed(f"idle-{i:05d}", "", spec, InstancePolicy()))
        per_task = (tracemalloc.get_traced_memory()[0] - before) / 1_000
    finally:
        tracemalloc.stop()
    assert per_task < 16_000, f"{per_task:.0f} bytes per idle task"
    for i in range(1_000, 10_000):
        await node.declare_task(TaskSeed(f"idle-{i:05d}", "", spec, InstancePolicy()))
    assert (await node.get_health())["tasks"] == 10_001
    assert (await node.get_health())["instances"] == 0
    # Any of them routes by name (a dict lookup, whatever the count).
    assert (await node.invoke("double", 21, task_name="idle-09999"))["result"] == 42


async def test_drain_lets_running_calls_finish_and_refuses_new_ones(tmp_path: Path, no_leaked_processes: None) -> None:
    outcome: dict[str, Any] = {}
    async with open_node(fast_config(tmp_path, listen=["ws://127.0.0.1:0"])) as node:
        await node.invoke("pid", None, task_name="dr", artifact_spec=BUSY)

        async def running() -> None:
            outcome["running"] = await node.invoke("wait", [0.5], task_name="dr", context={"execution_id": "exec-dr"})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(running)
            await until_running(node, "exec-dr")
            assert await node.drain(grace=10) is True
        assert outcome["running"]["result"] == "waited"
        with pytest.raises(SpearError) as info:
            await node.invoke("pid", None, task_name="dr")
        assert info.value.code is ErrorCode.UNAVAILABLE
        assert (await node.get_health())["status"] == "DRAINING"
        with pytest.raises(OSError):  # the gateway no longer accepts connections
            await trio.open_tcp_stream("127.0.0.1", node.endpoints[0].port)


async def test_drain_past_its_grace_ends_what_is_left(tmp_path: Path, no_leaked_processes: None) -> None:
    waiter: dict[str, Any] = {}
    async with trio.open_nursery() as outer, open_node(fast_config(tmp_path)) as node:
        accepted = await node.invoke("wait", [30], task_name="slow", artifact_spec=BUSY, execution_mode="ASYNC")

        async def wait_for_it() -> None:
            try:
                waiter["record"] = await node.wait_execution(accepted["execution_id"])
            except SpearError as exc:
                waiter["error"] = exc

        outer.start_soon(wait_for_it)
        assert await node.drain(grace=0.3) is False
    # The async execution's waiter was told (never silently lost).
    assert waiter["error"].code is ErrorCode.UNAVAILABLE

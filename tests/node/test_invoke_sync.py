"""Synchronous InvokeFunction end to end: real node, real agent processes."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

import spear_actors
from spear_actors import ErrorCode, SpearError
from spear_actors.config import TaskDeclaration
from spear_actors.model import ArtifactSpec, InstancePolicy
from spear_actors.node import Node, open_node
from spear_actors.protocol.handshake import open_connection
from spear_actors.protocol.messages import Hello
from spear_actors.protocol.transports import open_transport

from ..conftest import AGENTS, agent_spec, child_pids, fast_config, live_tasks, open_sockets, until_running

BUSY = AGENTS / "busy_agent.py"


async def expect_error(code: ErrorCode, call: Any) -> SpearError:
    with pytest.raises(SpearError) as info:
        await call
    assert info.value.code is code, info.value
    return info.value


async def test_new_task_then_existing_task_reuse_the_warm_instance(node: Node) -> None:
    first = await node.invoke("add", [1, 2], task_name="calc", artifact_spec=agent_spec())
    assert first["result"] == 3
    assert first["status"] == "COMPLETED"
    again = await node.invoke("add", [2, 3], task_name="calc", artifact_spec=agent_spec())
    assert again["task_id"] == first["task_id"]
    by_id = await node.invoke("echo", {"x": [1, "two"]}, task_id=first["task_id"])
    assert by_id["result"] == {"x": [1, "two"]}
    assert first["instance_id"] == again["instance_id"] == by_id["instance_id"]
    assert first["execution_id"] != again["execution_id"]


async def test_task_name_alone_reaches_an_existing_task(node: Node) -> None:
    await node.invoke("add", [1, 1], task_name="named", artifact_spec=agent_spec())
    assert (await node.invoke("add", [2, 2], task_name="named"))["result"] == 4


@pytest.mark.parametrize(
    ("request_fields", "code", "fragment"),
    [
        ({"invocation_type": "NEW_TASK", "artifact_spec": agent_spec()}, ErrorCode.INVALID_ARGUMENT, "task_name"),
        ({"invocation_type": "NEW_TASK", "task_name": "nobody"}, ErrorCode.INVALID_ARGUMENT, "artifact_spec"),
        ({"invocation_type": "EXISTING_TASK"}, ErrorCode.INVALID_ARGUMENT, "task_id"),
        ({"invocation_type": "SOMETHING", "task_name": "t"}, ErrorCode.INVALID_ARGUMENT, "invocation_type"),
        ({"invocation_type": "EXISTING_TASK", "task_id": "task-none"}, ErrorCode.NOT_FOUND, "task-none"),
        (
            {"invocation_type": "EXISTING_TASK", "task_id": "task-none", "create_if_not_exists": True},
            ErrorCode.INVALID_ARGUMENT,
            "artifact_spec",
        ),
        ({"task_name": "t", "artifact_spec": {"location": ""}}, ErrorCode.INVALID_ARGUMENT, "location"),
        (
            {"task_name": "t", "artifact_spec": agent_spec(), "context": {"timeout_ms": -1}},
            ErrorCode.INVALID_ARGUMENT,
            "timeout_ms",
        ),
        # Under an allowed artifact root (fast_config allows the repository).
        ({"task_name": "t", "artifact_spec": {"location": str(AGENTS / "no/such.py")}}, ErrorCode.NOT_FOUND, "no/such"),
        (
            {"task_name": "t", "artifact_spec": {"location": "x", "artifact_type": "jvm"}},
            ErrorCode.INVALID_ARGUMENT,
            "artifact_type",
        ),
    ],
)
async def test_validation_rules(node: Node, request_fields: dict[str, Any], code: ErrorCode, fragment: str) -> None:
    error = await expect_error(code, node.invoke("add", [1, 2], **request_fields))
    assert fragment in error.message


async def test_function_name_is_required(node: Node) -> None:
    error = await expect_error(ErrorCode.INVALID_ARGUMENT, node.invoke("", None, task_name="t"))
    assert "function_name" in error.message


async def test_create_if_not_exists_creates_the_task_with_that_id(node: Node) -> None:
    response = await node.invoke(
        "add", [5, 5], task_id="task-chosen", create_if_not_exists=True, artifact_spec=agent_spec()
    )
    assert response["task_id"] == "task-chosen"
    assert (await node.invoke("add", [1, 1], task_id="task-chosen"))["result"] == 2


async def test_function_error_carries_type_message_traceback_and_logs(node: Node) -> None:
    error = await expect_error(
        ErrorCode.FUNCTION_ERROR,
        node.invoke("fail", {"message": "bad input"}, task_name="t", artifact_spec=agent_spec()),
    )
    assert error.message == "ValueError: bad input"
    assert error.details["type"] == "ValueError"
    assert "raise ValueError(message)" in error.details["traceback"]
    assert error.details["logs"] == ["about to fail with 'bad input'"]
    assert error.details["execution_id"]


async def test_unknown_function_is_not_found(node: Node) -> None:
    call = node.invoke("nope", None, task_name="t", artifact_spec=agent_spec())
    error = await expect_error(ErrorCode.NOT_FOUND, call)
    assert "nope" in error.message and "add" in error.message


async def test_timeout_answers_deadline_exceeded_and_the_instance_stays_usable(node: Node) -> None:
    spec = agent_spec(BUSY)
    first = await node.invoke("pid", None, task_name="busy", artifact_spec=spec)
    with trio.fail_after(5):  # the caller is answered at its deadline, not when the work ends
        await expect_error(
            ErrorCode.DEADLINE_EXCEEDED,
            node.invoke("wait", [30], task_name="busy", context={"timeout_ms": 200}),
        )
    after = await node.invoke("pid", None, task_name="busy")
    assert after["result"] == first["result"]  # same agent process, still healthy
    assert after["instance_id"] == first["instance_id"]


async def test_agent_killed_mid_call_fails_the_call_and_the_next_call_works(node: Node) -> None:
    spec = agent_spec(BUSY)
    victim = (await node.invoke("pid", None, task_name="crash", artifact_spec=spec))["result"]
    outcome: dict[str, Any] = {}

    async def long_call() -> None:
        try:
            await node.invoke("wait", [30], task_name="crash", context={"execution_id": "exec-crash"})
        except SpearError as exc:
            outcome["error"] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(long_call)
        await until_running(node, "exec-crash")
        os.kill(victim, signal.SIGKILL)
    error = outcome["error"]
    assert error.code is ErrorCode.INSTANCE_FAILED
    assert "exited" in error.message or "lost" in error.message
    replacement = await node.invoke("pid", None, task_name="crash")
    assert replacement["result"] != victim


async def test_wrong_secret_is_never_ready(node: Node) -> None:
    # Three failed starts in a row (the call waits through them): DEGRADED.
    error = await expect_error(
        ErrorCode.UNAVAILABLE,
        node.invoke("add", [1, 2], task_name="liar", artifact_spec=agent_spec(AGENTS / "wrong_secret_agent.py")),
    )
    assert "UNAUTHENTICATED" in error.details["stderr_tail"]


async def test_raw_connection_with_a_wrong_secret_is_refused(node: Node) -> None:
    address = node.config.agent_listen
    assert address is not None
    async with open_transport(address) as transport:
        with pytest.raises(SpearError) as info:
            async with open_connection(transport, Hello(role="agent", auth="guess")):
                pass
    assert info.value.code is ErrorCode.UNAUTHENTICATED


async def test_agent_that_never_dials_back_fails_with_the_stderr_tail(
    tmp_path: Path, no_leaked_processes: None
) -> None:
    async with open_node(fast_config(tmp_path, start_timeout_s=1.0, start_backoff_s=0.1)) as node:
        error = await expect_error(
            ErrorCode.UNAVAILABLE,  # DEGRADED after three such starts; the call waited for them
            node.invoke("x", None, task_name="mute", artifact_spec=agent_spec(AGENTS / "silent_agent.py")),
        )
    assert "did not dial back within 1s" in error.message
    assert "never dialing back" in error.details["stderr_tail"]


async def test_200_concurrent_invocations_over_one_websocket(node: Node) -> None:
    results: dict[int, Any] = {}
    async with spear_actors.connect(str(node.endpoints[0])) as client:
        await client.invoke("double", 0, task_name="fan", artifact_spec=agent_spec(BUSY))

        async def one(i: int) -> None:
            results[i] = (await client.invoke("double", i, task_name="fan"))["result"]

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(one, i)
    assert results == {i: 2 * i for i in range(200)}


async def test_calls_wait_for_a_slot_and_instances_scale_to_the_maximum(node: Node) -> None:
    spec = agent_spec(BUSY)
    policy = {"max_instances": 3, "max_concurrency": 1}
    instances: set[str] = set()

    async def one() -> None:
        response = await node.invoke("wait", [0.3], task_name="pool", artifact_spec=spec, policy=policy)
        instances.add(response["instance_id"])

    async with trio.open_nursery() as nursery:
        for _ in range(9):
            nursery.start_soon(one)
    assert len(instances) == 3


async def test_force_new_instance_adds_an_instance(node: Node) -> None:
    spec = agent_spec(BUSY)
    first = await node.invoke("pid", None, task_name="forced", artifact_spec=spec)
    second = await node.invoke("pid", None, task_name="forced", artifact_spec=spec, force_new_instance=True)
    assert second["task_id"] == first["task_id"]
    assert second["instance_id"] != first["instance_id"]
    assert second["result"] != first["result"]


async def test_declared_tasks_exist_at_start(tmp_path: Path, no_leaked_processes: None) -> None:
    config = fast_config(tmp_path)
    config.tasks = [
        TaskDeclaration("declared", ArtifactSpec(location=str(BUSY)), policy=InstancePolicy(min_instances=1))
    ]
    async with open_node(config) as node:
        assert (await node.health())["tasks"] == 1
        assert (await node.invoke("double", 21, task_name="declared"))["result"] == 42


async def test_shutdown_leaves_no_agent_process_and_no_task(tmp_path: Path) -> None:
    before = child_pids()
    tasks_before = live_tasks()
    sockets_before = open_sockets()
    async with open_node(fast_config(tmp_path, listen=["ws://127.0.0.1:0"])) as node:
        for name in ("a", "b", "c"):
            await node.invoke("pid", None, task_name=name, artifact_spec=agent_spec(BUSY))
        async with spear_actors.connect(str(node.endpoints[0])) as client:
            await client.invoke("double", 1, task_name="a", execution_mode="ASYNC")
        assert len(child_pids() - before) == 3
        assert len(live_tasks() - tasks_before) > 10  # actors, workers, listeners, connections
        assert open_sockets() > sockets_before
    assert child_pids() - before == set()
    assert live_tasks() - tasks_before == set()
    assert open_sockets() == sockets_before  # listeners, agent and client connections all closed


async def test_shutdown_answers_in_flight_calls_unavailable(tmp_path: Path, no_leaked_processes: None) -> None:
    outcome: dict[str, Any] = {}
    async with trio.open_nursery() as outer, open_node(fast_config(tmp_path)) as node:
        await node.invoke("pid", None, task_name="slow", artifact_spec=agent_spec(BUSY))

        async def long_call() -> None:
            try:
                await node.invoke("wait", [30], task_name="slow", context={"execution_id": "exec-slow"})
            except SpearError as exc:
                outcome["error"] = exc

        outer.start_soon(long_call)  # outlives the node: it hears how the node ended it
        await until_running(node, "exec-slow")
    assert outcome["error"].code is ErrorCode.UNAVAILABLE


async def test_one_node_serves_websocket_tcp_and_unix_clients(tmp_path: Path, no_leaked_processes: None) -> None:
    listen = ["ws://127.0.0.1:0", "tcp://127.0.0.1:0", f"unix://{tmp_path}/gateway.sock"]
    async with open_node(fast_config(tmp_path, listen=listen)) as node:
        assert [e.scheme for e in node.endpoints] == ["ws", "tcp", "unix"]
        for endpoint in node.endpoints:
            async with spear_actors.connect(str(endpoint)) as client:
                response = await client.invoke("add", [2, 3], task_name="calc", artifact_spec=agent_spec())
                assert response["result"] == 5


async def test_gateway_token_is_required_when_configured(tmp_path: Path, no_leaked_processes: None) -> None:
    async with open_node(fast_config(tmp_path, listen=["ws://127.0.0.1:0"], token="s3cret")) as node:
        url = str(node.endpoints[0])
        for token in (None, "wrong"):
            with pytest.raises(SpearError) as info:
                async with spear_actors.connect(url, token=token) as client:
                    await client.get_health()
            assert info.value.code is ErrorCode.UNAUTHENTICATED
        async with spear_actors.connect(url, token="s3cret") as client:
            assert (await client.get_health())["status"] == "SERVING"


async def test_sys_exit_in_a_function_is_a_function_error(node: Node) -> None:
    error = await expect_error(
        ErrorCode.FUNCTION_ERROR, node.invoke("quit_now", None, task_name="q", artifact_spec=agent_spec(BUSY))
    )
    assert error.details["type"] == "SystemExit"
    assert (await node.invoke("double", 2, task_name="q"))["result"] == 4  # same agent, still serving


async def test_a_result_over_the_frame_limit_is_a_function_error(node: Node) -> None:
    error = await expect_error(
        ErrorCode.FUNCTION_ERROR, node.invoke("huge", 17 * 1024 * 1024, task_name="h", artifact_spec=agent_spec(BUSY))
    )
    assert "exceeds the frame limit" in error.message
    first = await node.invoke("pid", None, task_name="h")
    assert (await node.invoke("pid", None, task_name="h"))["instance_id"] == first["instance_id"]


async def test_functions_see_their_call_context(node: Node) -> None:
    response = await node.invoke(
        "whoami",
        None,
        task_name="ctx",
        artifact_spec=agent_spec(BUSY),
        context={"execution_id": "exec-ctx", "environment": {"K": "V"}, "headers": {"trace": "t1"}},
    )
    assert response["result"] == {"execution_id": "exec-ctx", "environment": {"K": "V"}, "headers": {"trace": "t1"}}


async def test_deadline_message_names_the_function(node: Node) -> None:
    # The instance is READY first, so the deadline is spent running, not starting.
    await node.invoke("pid", None, task_name="dl", artifact_spec=agent_spec(BUSY))
    error = await expect_error(
        ErrorCode.DEADLINE_EXCEEDED,
        node.invoke("wait", [30], task_name="dl", context={"timeout_ms": 1000}),
    )
    assert error.message == "wait did not finish before its deadline"


async def test_a_deadline_passed_in_the_queue_names_the_function_too(node: Node) -> None:
    policy = {"max_instances": 1, "max_concurrency": 1}
    held = await node.invoke(
        "wait", [30], task_name="dlq", artifact_spec=agent_spec(BUSY), policy=policy, execution_mode="ASYNC"
    )
    error = await expect_error(
        ErrorCode.DEADLINE_EXCEEDED, node.invoke("double", 1, task_name="dlq", context={"timeout_ms": 200})
    )
    assert error.message.startswith("double: no instance of task 'dlq' was free before the deadline")
    await node.cancel_execution(held["execution_id"])


async def test_a_new_artifact_version_under_a_taken_name(node: Node) -> None:
    v1 = {**agent_spec(BUSY), "artifact_id": "calc", "version": "1"}
    v2 = {**agent_spec(BUSY), "artifact_id": "calc", "version": "2"}
    first = await node.invoke("double", 1, task_name="calc", artifact_spec=v1)
    assert (await node.invoke("double", 2, task_name="calc", artifact_spec=v1))["task_id"] == first["task_id"]
    error = await expect_error(ErrorCode.ALREADY_EXISTS, node.invoke("double", 3, task_name="calc", artifact_spec=v2))
    assert "'calc' version '1'" in error.message and "'calc' version '2'" in error.message
    # force_new_instance with another version upgrades: a new task takes the name,
    # the old one finishes what it has and goes away.
    running = await node.invoke("wait", [0.3], task_id=first["task_id"], execution_mode="ASYNC")
    upgraded = await node.invoke("double", 4, task_name="calc", artifact_spec=v2, force_new_instance=True)
    assert upgraded["task_id"] != first["task_id"] and upgraded["result"] == 8
    assert (await node.wait_execution(running["execution_id"]))["status"] == "COMPLETED"
    assert [t["task_id"] for t in (await node.list_tasks())["tasks"]] == [upgraded["task_id"]]
    with trio.fail_after(10):  # the drained old task is deleted once its calls are done
        while True:
            try:
                await node.get_task(first["task_id"])
            except SpearError as exc:
                assert exc.code is ErrorCode.NOT_FOUND
                break
            await trio.sleep(0.02)
    assert (await node.invoke("double", 5, task_name="calc"))["task_id"] == upgraded["task_id"]


async def test_a_sync_caller_gone_before_its_call_was_routed_has_it_cancelled(node: Node) -> None:
    """The caller's task is cancelled right after its Invoke went in, before the manager
    routed it (the task is not even created yet): the execution is cancelled once
    routed, not left running for nobody."""
    with trio.CancelScope() as scope:
        scope.cancel()  # the caller leaves at its first wait, which follows the send
        await node.invoke(
            "sleep",
            {"seconds": 60},
            task_name="left-early",
            artifact_spec=agent_spec(),
            context={"execution_id": "exec-left-early"},
        )
    with trio.fail_after(30):
        while True:
            try:
                record = await node.get_execution("exec-left-early")
            except SpearError as exc:
                assert exc.code is ErrorCode.NOT_FOUND
                record = {"status": "not yet routed"}
            if record["status"] not in ("not yet routed", "PENDING", "RUNNING"):
                break
            await trio.sleep(0.02)
    assert record["status"] == "CANCELLED"

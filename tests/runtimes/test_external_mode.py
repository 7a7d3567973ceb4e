"""The external instance mode in one process, on trio's mock clock: agents that dial
the node's real agent listener with a secret it issued (issue 17)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from spear_actors.config import TaskDeclaration
from spear_actors.errors import ErrorCode, SpearError
from spear_actors.model import ArtifactSpec
from spear_actors.node import open_node
from spear_actors.protocol.connection import Connection
from spear_actors.runtimes.process import MAX_AGENT_HANDSHAKES

from ..conftest import agent_spec, fast_config, live_tasks
from .external_helpers import EXTERNAL, dialled_agent, external_config, instances, task_id_of, until_instances


async def test_an_agent_that_dials_in_serves_the_task_and_its_secret_is_good_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_node(external_config(tmp_path)) as node:
        accepted = await node.invoke("add", [1, 2], task_name="ext", artifact_spec=EXTERNAL, execution_mode="ASYNC")
        await until_instances(node, "ext", "CREATING")  # min_instances 1: one waits for an agent
        issued = await node.issue_agent_secret("ext", ttl=60)
        assert issued["env"] == {"SERVICE_ADDR": issued["agent_addr"], "SECRET": issued["secret"]}
        assert issued["agent_addr"] == node.config.agent_listen
        async with dialled_agent(issued["agent_addr"], issued["secret"]):
            done = await node.wait_execution(accepted["execution_id"], timeout=10)
            assert (done["status"], done["result"]) == ("COMPLETED", 3)
            response = await node.invoke("add", [20, 22], task_name="ext")
            assert (response["result"], response["logs"]) == (42, ["adding"])
            async with node.stream("count", [3], task_name="ext") as items:
                assert [item async for item in items] == [0, 1, 2]
            assert items.response is not None and items.response["result"] == {"counted": 3}
            with pytest.raises(SpearError, match="unknown or already used agent secret") as reused:
                async with dialled_agent(issued["agent_addr"], issued["secret"]):
                    pass
            assert reused.value.code is ErrorCode.UNAUTHENTICATED
            with pytest.raises(SpearError, match="unknown or already used") as wrong:
                async with dialled_agent(issued["agent_addr"], "not-" + issued["secret"]):
                    pass
            assert wrong.value.code is ErrorCode.UNAUTHENTICATED
            assert (await node.invoke("add", [1, 1], task_name="ext"))["result"] == 2  # still served


async def test_a_secret_past_its_ttl_is_refused(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with open_node(external_config(tmp_path)) as node:
        await node.invoke("add", [1, 2], task_name="ext", artifact_spec=EXTERNAL, execution_mode="ASYNC")
        issued = await node.issue_agent_secret("ext", ttl=30)
        await trio.sleep(31)
        with pytest.raises(SpearError, match="agent secret expired") as expired:
            async with dialled_agent(issued["agent_addr"], issued["secret"]):
                pass
        assert expired.value.code is ErrorCode.UNAUTHENTICATED
        default = await node.issue_agent_secret("ext")  # the policy's default TTL: 600 s
        assert default["ttl_s"] == 600
        await trio.sleep(599)
        async with dialled_agent(default["agent_addr"], default["secret"]):
            assert (await node.invoke("add", [2, 2], task_name="ext"))["result"] == 4


async def test_calls_wait_for_an_agent_until_their_deadline(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_node(external_config(tmp_path)) as node:
        start = trio.current_time()
        with pytest.raises(SpearError, match="no instance of task 'ext' was free before the deadline") as late:
            await node.invoke("add", [1, 2], task_name="ext", artifact_spec=EXTERNAL, context={"timeout_ms": 5000})
        assert late.value.code is ErrorCode.DEADLINE_EXCEEDED
        assert trio.current_time() - start >= 5
        [waiting] = await instances(node, "ext")
        assert waiting["status"] == "CREATING"  # still waiting: a later agent serves later calls

        served = trio.Event()

        async def call_later() -> None:
            assert (await node.invoke("add", [3, 4], task_name="ext"))["result"] == 7
            served.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call_later)
            await trio.sleep(20)  # the call waits (default deadline 30 s) while no agent is there
            assert (await node.get_task(await task_id_of(node, "ext")))["pending"] == 1
            issued = await node.issue_agent_secret("ext")
            async with dialled_agent(issued["agent_addr"], issued["secret"]):
                await served.wait()


async def test_a_lost_agent_fails_its_call_and_the_next_agent_replaces_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_node(external_config(tmp_path)) as node:
        await node.invoke("add", [0, 0], task_name="ext", artifact_spec=EXTERNAL, execution_mode="ASYNC")
        first = await node.issue_agent_secret("ext")
        async with dialled_agent(first["agent_addr"], first["secret"]) as link:
            await until_instances(node, "ext", "READY")
            accepted = await node.invoke("sleep", [100], task_name="ext", execution_mode="ASYNC")
            await until_instances(node, "ext", "RUNNING")
            await link.aclose("agent killed")
        failed = await node.wait_execution(accepted["execution_id"], timeout=10)
        assert failed["status"] == "FAILED"
        assert failed["error"]["code"] == "INSTANCE_FAILED"
        assert "agent connection lost" in failed["error"]["message"]
        await until_instances(node, "ext", "CREATING")  # the replacement waits for a new agent
        second = await node.issue_agent_secret("ext")
        async with dialled_agent(second["agent_addr"], second["secret"]):
            assert (await node.invoke("add", [5, 5], task_name="ext"))["result"] == 10


async def test_an_agent_no_instance_takes_waits_in_the_lobby_until_its_secret_expires(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_node(external_config(tmp_path)) as node:
        policy = {"max_instances": 1}
        await node.invoke("add", [0, 0], task_name="ext", artifact_spec=EXTERNAL, policy=policy, execution_mode="ASYNC")
        serving = await node.issue_agent_secret("ext")
        standby = await node.issue_agent_secret("ext", ttl=100)
        async with dialled_agent(serving["agent_addr"], serving["secret"]) as first:
            await until_instances(node, "ext", "READY")
            async with dialled_agent(standby["agent_addr"], standby["secret"]) as second:
                # The task has its one instance: the second agent waits, connected.
                await trio.sleep(50)
                assert not second.closed
                await first.aclose("gone")
                # ... and takes over at once when the first one goes.
                await until_instances(node, "ext", "READY")
                assert (await node.invoke("add", [1, 1], task_name="ext"))["result"] == 2
                assert not second.closed
        late = await node.issue_agent_secret("ext", ttl=100)
        extra = await node.issue_agent_secret("ext", ttl=100)
        async with (
            dialled_agent(late["agent_addr"], late["secret"]),
            dialled_agent(extra["agent_addr"], extra["secret"]) as unused,
        ):
            await until_instances(node, "ext", "READY")
            start = trio.current_time()
            await unused.wait_closed()  # told goodbye when its secret expires
            assert trio.current_time() - start >= 90
            assert unused.close_reason is not None
            assert "before its secret expired" in unused.close_reason.message


async def test_secrets_are_bounded_per_task_and_in_time(tmp_path: Path) -> None:
    config = external_config(
        tmp_path, external_max_secrets_per_task=2, external_secret_ttl_s=60.0, external_secret_max_ttl_s=120.0
    )
    async with open_node(config) as node:
        await node.invoke("add", [0, 0], task_name="ext", artifact_spec=EXTERNAL, execution_mode="ASYNC")
        with pytest.raises(SpearError, match="above external_secret_max_ttl_s 120") as too_long:
            await node.issue_agent_secret("ext", ttl=121)
        assert too_long.value.code is ErrorCode.PERMISSION_DENIED
        await node.issue_agent_secret("ext", ttl=120)
        await node.issue_agent_secret("ext")
        with pytest.raises(SpearError, match="has 2 agent secrets outstanding") as full:
            await node.issue_agent_secret("ext")
        assert full.value.code is ErrorCode.RESOURCE_EXHAUSTED
        assert full.value.details == {"outstanding": 2, "limit": 2}


async def test_only_external_tasks_get_secrets_and_only_a_listed_runtime_makes_them(tmp_path: Path) -> None:
    async with open_node(external_config(tmp_path)) as node:
        with pytest.raises(SpearError, match="no task has the id or name 'nothing'") as unknown:
            await node.issue_agent_secret("nothing")
        assert unknown.value.code is ErrorCode.NOT_FOUND
        await node.invoke("add", [1, 2], task_name="local", artifact_spec=agent_spec())
        with pytest.raises(SpearError, match="task local is not external") as local:
            await node.issue_agent_secret("local")
        assert local.value.code is ErrorCode.FAILED_PRECONDITION
    # The default policy: clients may not make external tasks; the operator's config may.
    config = fast_config(tmp_path, store="memory")
    config.tasks = [TaskDeclaration("sensor", ArtifactSpec.from_dict(EXTERNAL))]
    async with open_node(config) as node:
        with pytest.raises(SpearError, match="artifact_type 'external' is not one of") as refused:
            await node.invoke("add", [1, 2], task_name="ext", artifact_spec=EXTERNAL)
        assert refused.value.code is ErrorCode.PERMISSION_DENIED
        issued = await node.issue_agent_secret("sensor")
        assert issued["task_name"] == "sensor"


async def test_deleting_an_external_task_says_goodbye_to_its_agent(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_node(external_config(tmp_path)) as node:
        await node.invoke("add", [0, 0], task_name="ext", artifact_spec=EXTERNAL, execution_mode="ASYNC")
        issued = await node.issue_agent_secret("ext")
        unused = await node.issue_agent_secret("ext")
        async with dialled_agent(issued["agent_addr"], issued["secret"]) as link:
            await until_instances(node, "ext", "READY")
            assert (await node.delete_task(await task_id_of(node, "ext")))["deleted"]
            with trio.fail_after(5):
                await link.wait_closed()
            assert link.close_reason is not None and "instance stopping" in link.close_reason.message
        # A new task of that name is another task: the old task's secrets are not its own.
        await node.invoke("add", [0, 0], task_name="ext", artifact_spec=EXTERNAL, execution_mode="ASYNC")
        async with dialled_agent(unused["agent_addr"], unused["secret"]) as stray:
            await trio.sleep(30)
            assert [i["status"] for i in await instances(node, "ext")] == ["CREATING"]
            await stray.wait_closed()  # told goodbye when the secret expires
        fresh = await node.issue_agent_secret("ext")
        async with dialled_agent(fresh["agent_addr"], fresh["secret"]):
            assert (await node.invoke("add", [4, 4], task_name="ext"))["result"] == 8


async def test_an_external_task_outlives_a_restart_and_secrets_name_the_advertised_address(tmp_path: Path) -> None:
    config = external_config(tmp_path, agent_advertise="ws://agents.example:7600")
    config.store = "sqlite"
    async with open_node(config) as node:
        await node.invoke("add", [0, 0], task_name="ext", artifact_spec=EXTERNAL, execution_mode="ASYNC")
        before = await node.issue_agent_secret("ext")
    assert before["agent_addr"] == "ws://agents.example:7600"
    async with open_node(config) as node:
        again = await node.issue_agent_secret("ext")  # the task was kept; old secrets were not
        assert again["task_id"] == before["task_id"]
        with pytest.raises(SpearError, match="unknown or already used"):
            async with dialled_agent(node.config.agent_listen or "", before["secret"]):
                pass
        async with dialled_agent(node.config.agent_listen or "", again["secret"]):
            assert (await node.invoke("add", [6, 7], task_name="ext"))["result"] == 13
    with pytest.raises(SpearError, match="scheme must be") as bad:
        async with open_node(external_config(tmp_path, agent_advertise="carrier-pigeon://x")):
            pass
    assert bad.value.code is ErrorCode.INVALID_ARGUMENT


async def test_the_node_stopping_closes_every_external_connection(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    tasks_before = live_tasks()

    async def agent(address: str, secret: str, *, task_status: trio.TaskStatus[Connection]) -> None:
        async with dialled_agent(address, secret) as link:
            task_status.started(link)
            await link.wait_closed()

    async with trio.open_nursery() as agents:  # outside the node: they outlive it
        async with open_node(external_config(tmp_path)) as node:
            policy = {"max_instances": 1}
            await node.invoke(
                "add", [0, 0], task_name="ext", artifact_spec=EXTERNAL, policy=policy, execution_mode="ASYNC"
            )
            serving, standby = [await node.issue_agent_secret("ext") for _ in range(2)]
            links = [await agents.start(agent, issued["agent_addr"], issued["secret"]) for issued in (serving, standby)]
            await until_instances(node, "ext", "READY")
            assert not any(link.closed for link in links)  # one instance, one agent in the lobby
        with trio.fail_after(5):
            for link in links:
                await link.wait_closed()
    assert live_tasks() - tasks_before == set()


async def test_connections_that_never_say_hello_cannot_hold_the_agent_listener(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_node(external_config(tmp_path)) as node:
        await node.invoke("add", [0, 0], task_name="ext", artifact_spec=EXTERNAL, execution_mode="ASYNC")
        issued = await node.issue_agent_secret("ext")
        path = issued["agent_addr"].removeprefix("unix://")
        silent = [await trio.open_unix_socket(path) for _ in range(MAX_AGENT_HANDSHAKES)]
        try:
            extra = await trio.open_unix_socket(path)
            with trio.fail_after(1):
                await _until_closed(extra)  # closed at once, not held
            await extra.aclose()
            await trio.sleep(11)  # the silent ones reach the handshake timeout and are closed
            for stream in silent:
                with trio.fail_after(1):
                    await _until_closed(stream)
        finally:
            for stream in silent:
                await stream.aclose()
        async with dialled_agent(issued["agent_addr"], issued["secret"]):
            assert (await node.invoke("add", [1, 1], task_name="ext"))["result"] == 2


async def _until_closed(stream: trio.SocketStream) -> None:
    """Read (and drop: a refusal, a goodbye) until the peer closes."""
    while await stream.receive_some():
        pass

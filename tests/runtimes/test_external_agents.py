"""External agents as real processes (started here as an operator would start them
elsewhere), dialling a real node over its unix or websocket agent listener with the
secret a real client (or ``spear agent-secret``) got (issue 17)."""

from __future__ import annotations

import json
import signal
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio

from spear_actors.client import connect
from spear_actors.errors import ErrorCode, SpearError
from spear_actors.node import open_node

from ..conftest import agent_spec, live_tasks
from .external_helpers import EXTERNAL, agent_process, external_config, until_instances

SPEAR = [sys.executable, "-m", "spear_actors.cli"]


async def _exit_code(process: trio.Process) -> int:
    with trio.fail_after(30):
        return await process.wait()


@pytest.mark.parametrize("agent_listen", ["unix", "ws://127.0.0.1:0"])
async def test_external_agents_serve_every_mode_and_are_supervised(
    tmp_path: Path, agent_listen: str, no_leaked_processes: None
) -> None:
    overrides: dict[str, Any] = {"listen": ["ws://127.0.0.1:0"]}
    if agent_listen != "unix":
        overrides["agent_listen"] = agent_listen
    tasks_before = live_tasks()
    async with AsyncExitStack() as outside:
        async with (
            open_node(external_config(tmp_path, **overrides)) as node,
            connect(str(node.endpoints[0])) as client,
        ):
            accepted = await client.invoke(
                "add", [1, 2], task_name="ext", artifact_spec=EXTERNAL, execution_mode="ASYNC"
            )
            issued = await client.call("issue_agent_secret", {"task_id": "ext"})
            assert issued["agent_addr"].startswith(agent_listen.split(":")[0])
            async with agent_process(issued["env"]) as agent:
                done = await client.wait_execution(accepted["execution_id"], timeout=30)
                assert (done["status"], done["result"]) == ("COMPLETED", 3)
                assert (await client.invoke("add", [20, 22], task_name="ext"))["result"] == 42
                async with client.stream("count", [4], task_name="ext") as items:
                    assert [item async for item in items] == [0, 1, 2, 3]
                # The secret was good once: a second agent with it is refused and exits 2.
                async with agent_process(issued["env"]) as again:
                    assert await _exit_code(again) == 2
                async with agent_process({**issued["env"], "SECRET": "guessed"}) as wrong:
                    assert await _exit_code(wrong) == 2
                # The agent dies mid-call: the call fails INSTANCE_FAILED, the task waits for another.
                async with trio.open_nursery() as nursery:
                    failures: list[SpearError] = []

                    async def sleeper() -> None:
                        with pytest.raises(SpearError) as lost:
                            await client.invoke("sleep", [60], task_name="ext")
                        failures.append(lost.value)

                    nursery.start_soon(sleeper)
                    await until_instances(node, "ext", "RUNNING")
                    agent.send_signal(signal.SIGKILL)
                [lost] = failures
                assert lost.code is ErrorCode.INSTANCE_FAILED
                assert "agent connection lost" in lost.message
                await until_instances(node, "ext", "CREATING")
                replacement = await client.issue_agent_secret("ext", ttl=60)
                assert replacement["ttl_s"] == 60
                second = await outside.enter_async_context(agent_process(replacement["env"]))
                assert (await client.invoke("add", [5, 5], task_name="ext"))["result"] == 10
        # The node has stopped: it said goodbye to the external agent, which exited by itself.
        with trio.fail_after(30):
            assert await second.wait() == 0
    assert live_tasks() - tasks_before == set()


async def test_spear_agent_secret_prints_the_environment_of_an_agent(tmp_path: Path, no_leaked_processes: None) -> None:
    config = external_config(tmp_path, listen=["ws://127.0.0.1:0"], agent_listen="ws://127.0.0.1:0")
    async with open_node(config) as node:
        url = str(node.endpoints[0])
        await node.invoke("add", [0, 0], task_name="sensor", artifact_spec=EXTERNAL, execution_mode="ASYNC")
        printed = await trio.run_process(
            [*SPEAR, "agent-secret", "sensor", "--url", url, "--ttl", "120"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert printed.returncode == 0, printed.stderr
        lines = printed.stdout.decode().splitlines()
        env = dict(line.split("=", 1) for line in lines)
        assert sorted(env) == ["SECRET", "SERVICE_ADDR"]
        assert env["SERVICE_ADDR"].startswith("ws://127.0.0.1:") and not env["SERVICE_ADDR"].endswith(":0")
        assert "within 120 s" in printed.stderr.decode()
        async with agent_process(env):
            assert (await node.invoke("add", [2, 3], task_name="sensor"))["result"] == 5
        as_json = await trio.run_process(
            [*SPEAR, "agent-secret", "sensor", "--url", url, "--json"], capture_stdout=True, check=False
        )
        answer = json.loads(as_json.stdout)
        assert answer["task_name"] == "sensor" and answer["ttl_s"] == 600 and answer["secret"] != env["SECRET"]
        await node.invoke("add", [1, 2], task_name="local", artifact_spec=agent_spec())
        refused = await trio.run_process(
            [*SPEAR, "agent-secret", "local", "--url", url], capture_stdout=True, capture_stderr=True, check=False
        )
        assert refused.returncode == 1 and refused.stdout == b""
        assert refused.stderr.decode().startswith("FAILED_PRECONDITION: task local is not external")

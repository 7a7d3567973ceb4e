"""Agents that dial their node over websocket (``SERVICE_ADDR=ws://…``): the base of
agents running in another container or machine (issue 17)."""

from __future__ import annotations

import functools
from pathlib import Path

import trio

from spear_actors.node import open_node

from ..conftest import agent_spec, fast_config, until_running


async def test_agents_dialling_over_websocket_serve_every_mode(tmp_path: Path, no_leaked_processes: None) -> None:
    config = fast_config(tmp_path, agent_listen="ws://127.0.0.1:0", store="memory")
    async with open_node(config) as node:
        spec = agent_spec()
        assert (await node.invoke("add", [20, 22], task_name="ws-agent", artifact_spec=spec))["result"] == 42
        [task] = (await node.list_tasks())["tasks"]
        assert task["instances"]  # a live instance, its agent on a websocket
        async with node.stream("count", [4], task_name="ws-agent") as items:
            assert [item async for item in items] == [0, 1, 2, 3]
        big = "x" * 300_000  # several websocket frames' worth, both ways
        assert (await node.invoke("echo", {"data": big}, task_name="ws-agent"))["result"] == {"data": big}
        accepted = await node.invoke("sleep", [30], task_name="ws-agent", execution_mode="ASYNC")
        await until_running(node, accepted["execution_id"])
        cancelled = await node.cancel_execution(accepted["execution_id"])
        assert cancelled["status"] == "CANCELLED"
        async with trio.open_nursery() as nursery:  # concurrent calls over the agents' links
            for n in range(8):
                nursery.start_soon(functools.partial(node.invoke, "add", [n, 1], task_name="ws-agent"))

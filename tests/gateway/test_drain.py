"""A drain keeps its promise to gateway clients: no new connections or calls, and a
SYNC call that finishes within the grace gets its result over its websocket."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from spear_actors import ErrorCode, SpearError
from spear_actors.client import connect
from spear_actors.serving import open_node

from ..conftest import agent_spec, fast_config


async def test_a_sync_call_over_websocket_gets_its_result_during_a_drain(
    tmp_path: Path, no_leaked_processes: None
) -> None:
    outcome: dict[str, Any] = {}
    async with open_node(fast_config(tmp_path, listen=["ws://127.0.0.1:0"])) as node:
        url = str(node.endpoints[0])
        async with connect(url) as client, connect(url) as idle_client:
            await client.invoke("add", [1, 2], task_name="hello", artifact_spec=agent_spec())

            async def sleeper() -> None:
                outcome["response"] = await client.invoke(
                    "sleep", [3.0], task_name="hello", context={"execution_id": "exec-drain"}
                )

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sleeper)
                with trio.fail_after(10):
                    while True:
                        try:
                            if (await idle_client.get_execution("exec-drain"))["status"] == "RUNNING":
                                break
                        except SpearError:
                            pass  # not registered yet
                        await trio.sleep(0.01)
                drained = trio.Event()

                async def drain() -> None:
                    outcome["drained"] = await node.drain(grace=20)
                    drained.set()

                nursery.start_soon(drain)
                await trio.sleep(0.1)
                # new calls on an open connection: UNAVAILABLE with a retry hint
                with pytest.raises(SpearError) as refused:
                    await idle_client.invoke("add", [1, 2], task_name="hello")
                assert refused.value.code is ErrorCode.UNAVAILABLE
                assert refused.value.details["retry_after_ms"] > 0
                # reads are still served while running calls finish
                assert (await idle_client.get_health())["status"] == "DRAINING"
                # no new connections
                with pytest.raises(SpearError) as no_connection:
                    async with connect(url, connect_timeout=2):
                        pass
                assert no_connection.value.code is ErrorCode.UNAVAILABLE
                with trio.fail_after(20):
                    await drained.wait()
            assert outcome["response"]["result"] == {"slept": 3.0}
            assert outcome["drained"] is True
            # then the connections are closed by the node
            with pytest.raises(SpearError) as closed:
                await idle_client.get_health()
            assert closed.value.code is ErrorCode.UNAVAILABLE

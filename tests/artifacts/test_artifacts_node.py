"""NEW_TASK with an http artifact, end to end through a real node and agent processes."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from spear_actors import ErrorCode, SpearError
from spear_actors.node import open_node

from ..conftest import EXAMPLE_AGENT, fast_config
from .artifact_helpers import ArtifactServer, sha

AGENT = EXAMPLE_AGENT.read_bytes()


def remote_spec(url: str, checksum: str = sha(AGENT)) -> dict[str, object]:
    return {"artifact_id": "hello", "version": "1", "location": url, "checksum": checksum}


async def test_new_task_from_an_http_artifact(
    server: ArtifactServer, tmp_path: Path, no_leaked_processes: None
) -> None:
    url = server.serve("/artifacts/hello_agent.py", AGENT)
    async with open_node(fast_config(tmp_path)) as node:
        results: list[object] = []

        async def call(i: int) -> None:
            # 50 NEW_TASKs over 5 task names: 5 tasks created concurrently, one download.
            response = await node.invoke("add", [i, 1], task_name=f"remote-{i % 5}", artifact_spec=remote_spec(url))
            results.append(response["result"])

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(call, i)
        assert sorted(results) == list(range(1, 51))  # type: ignore[type-var]
    assert server.hits["/artifacts/hello_agent.py"] == 1

    server.stop()
    async with open_node(fast_config(tmp_path)) as node:  # restart: served from the cache
        response = await node.invoke("add", [2, 3], task_name="again", artifact_spec=remote_spec(url))
        assert response["result"] == 5


async def test_new_task_with_a_bad_checksum_fails(
    server: ArtifactServer, tmp_path: Path, no_leaked_processes: None
) -> None:
    url = server.serve("/hello_agent.py", AGENT)
    async with open_node(fast_config(tmp_path)) as node:
        with pytest.raises(SpearError) as info:
            await node.invoke("add", [1, 2], task_name="bad", artifact_spec=remote_spec(url, sha(b"other")))
        assert info.value.code is ErrorCode.INVALID_ARGUMENT
        assert sha(b"other") in info.value.message and sha(AGENT) in info.value.message
        with pytest.raises(SpearError) as info:
            await node.invoke("add", [1, 2], task_name="missing", artifact_spec=remote_spec(server.url("/nope.py")))
        assert info.value.code is ErrorCode.NOT_FOUND

"""``peers.py`` drivers for spear_actors (run in the project's ``.venv``).

    _peers_spear.py node      a node with ws and tcp gateways and a warm ``echo`` task;
                              runs the in-process ``node.invoke`` measurements itself
    _peers_spear.py client WS_URL TCP_URL
                              a client service in its own process, as a real one would
                              be: 1 connection for sequential calls, 8 for 64 in flight

The task is created by the node process (the operator) from examples/hello_agent.py,
under the policy's artifact root (examples/), as benchmarks/invoke.py does.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _peers_common import PAYLOAD, emit, in_flight_rate, serve_async, timed_sequence  # noqa: E402

from spear_actors import connect, open_node, tune_gc  # noqa: E402
from spear_actors.config import NodeConfig  # noqa: E402
from spear_actors.policy import OperatorPolicy  # noqa: E402

AGENT = ROOT / "examples" / "hello_agent.py"
TASK = "bench"
CONNECTIONS = 8
# As in benchmarks/invoke.py (the figures of issue 15): up to 4 agents, 16 calls each.
INSTANCE_POLICY = {"max_instances": 4, "max_concurrency": 16}


async def run_node() -> None:
    config = NodeConfig(
        listen=["ws://127.0.0.1:0", "tcp://127.0.0.1:0"],
        data_dir=Path(tempfile.mkdtemp(prefix="spear-peers-")),
        policy=OperatorPolicy(artifact_roots=[ROOT / "examples"]),
    )
    async with open_node(config) as node:
        tune_gc()  # as `spear serve` does once its node is up
        spec = {"location": str(AGENT)}
        await node.invoke("echo", PAYLOAD, task_name=TASK, artifact_spec=spec, policy=INSTANCE_POLICY)

        async def call() -> Any:
            return await node.invoke("echo", PAYLOAD, task_name=TASK)

        async def handle(command: dict[str, Any]) -> dict[str, Any]:
            if command["op"] == "seq":
                return await timed_sequence(call, command["n"])
            return await in_flight_rate([call], command["in_flight"], command["total"])

        urls = {endpoint.scheme: str(endpoint) for endpoint in node.endpoints}
        emit({"ready": True, "node_pid": os.getpid(), "server_roots": [os.getpid()], "exclude": [], **urls})
        await serve_async(handle)


@asynccontextmanager
async def clients(url: str, count: int) -> AsyncIterator[list[Any]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(connect(url)) for _ in range(count)]


async def run_client(urls: dict[str, str], node_pid: int) -> None:
    async with clients(urls["ws"], CONNECTIONS) as ws, clients(urls["tcp"], CONNECTIONS) as tcp:
        by_target = {"ws": ws, "tcp": tcp}

        async def handle(command: dict[str, Any]) -> dict[str, Any]:
            calls = [lambda c=c: c.invoke("echo", PAYLOAD, task_name=TASK) for c in by_target[command["target"]]]
            if command["op"] == "seq":
                return await timed_sequence(calls[0], command["n"])
            return await in_flight_rate(calls, command["in_flight"], command["total"])

        emit({"ready": True, "node_pid": node_pid, "server_roots": [node_pid], "exclude": [os.getpid()]})
        await serve_async(handle)


if __name__ == "__main__":
    if sys.argv[1] == "node":
        trio.run(run_node)
    else:
        trio.run(run_client, {"ws": sys.argv[2], "tcp": sys.argv[3]}, int(sys.argv[4]))

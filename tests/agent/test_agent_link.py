"""The agent SDK's link to its node, with real agent processes.

(a) The agent's reader never stops reading to write: while a worker's big answer is
    stuck because the node does not read, pings and the node's next big request are
    still read (the previous SDK's reader waited for the worker's write lock).
(b) On the node's side of an agent link, a caller leaves at its deadline when the
    agent stops reading (SIGSTOP), however much is queued on the link.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from spear_actors import open_node
from spear_actors.errors import ErrorCode, SpearError
from spear_actors.protocol.connection import Connection, ConnectionConfig
from spear_actors.protocol.framing import DEFAULT_MAX_FRAME_SIZE
from spear_actors.protocol.handshake import accept_connection, token_authenticator
from spear_actors.protocol.messages import Hello, Ping, Request, Response, Welcome, decode_message, encode_message
from spear_actors.protocol.transports import Transport, serve_endpoint

from ..conftest import agent_spec, fast_config
from .agent_processes import SECRET, agent_process

AGENT = Path(__file__).resolve().parent / "bulky_agent.py"
MIB = 1024 * 1024


async def test_the_agent_reads_while_a_worker_cannot_write(tmp_path: Path) -> None:
    done = trio.Event()
    answers: dict[int, object] = {}

    async def node(transport: Transport) -> None:
        hello = decode_message(await transport.receive_body() or b"")
        assert isinstance(hello, Hello) and hello.auth == SECRET
        welcome = Welcome(heartbeat_interval_ms=1000, heartbeat_timeout_ms=30_000)
        await transport.send_bodies([encode_message(welcome)])
        execute = {"function": "big", "params": [12 * MIB]}
        await transport.send_bodies([encode_message(Request(1, "execute", execute))])
        # The worker now writes its 12 MiB answer, which we do not read; meanwhile a
        # ping and a big request must still be read by the agent. (Without the pause
        # the previous SDK could escape by answering the ping first.)
        await trio.sleep(0.5)
        await transport.send_bodies([encode_message(Ping(1))])
        execute = {"function": "size", "params": [b"y" * (12 * MIB)]}
        await transport.send_bodies([encode_message(Request(2, "execute", execute))])
        while len(answers) < 2:
            message = decode_message(await transport.receive_body() or b"")
            if isinstance(message, Response):
                answers[message.id] = message.result["value"]
        done.set()

    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(
            partial(serve_endpoint, f"unix://{tmp_path}/a.sock", node, max_frame_size=32 * MIB)
        )
        async with agent_process(str(endpoint), AGENT):
            with trio.fail_after(60):  # a deadlock waits for this; the fix takes a second
                await done.wait()
        nursery.cancel_scope.cancel()
    assert answers == {1: b"x" * (12 * MIB), 2: 12 * MIB}


async def test_a_node_caller_leaves_at_its_deadline_when_the_agent_stops_reading(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    connections: list[Connection] = []
    ready = trio.Event()

    async def node(transport: Transport) -> None:
        config = ConnectionConfig(heartbeat_interval=600, heartbeat_timeout=1200, max_frame_size=32 * MIB)
        async with accept_connection(transport, authenticator=token_authenticator(SECRET), config=config) as c:
            connections.append(c)
            ready.set()
            await c.wait_closed()

    left_after: list[float] = []

    async def call(connection: Connection, n: int) -> None:
        start = trio.current_time()
        with pytest.raises(SpearError) as info:
            await connection.request("execute", {"function": "size", "params": [b"z" * n]}, timeout=0.3)
        assert info.value.code == ErrorCode.DEADLINE_EXCEEDED
        left_after.append(trio.current_time() - start)

    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(
            partial(serve_endpoint, f"unix://{tmp_path}/b.sock", node, max_frame_size=32 * MIB)
        )
        async with agent_process(str(endpoint), AGENT) as process:
            with trio.fail_after(30):
                await ready.wait()
            os.kill(process.pid, signal.SIGSTOP)  # the agent reads nothing from now on
            async with trio.open_nursery() as callers:
                for _ in range(4):
                    callers.start_soon(call, connections[0], 8 * MIB)
                await trio.testing.wait_all_tasks_blocked()
                mock_clock.autojump_threshold = 0  # time jumps only when every task waits
        nursery.cancel_scope.cancel()
    assert left_after == [pytest.approx(0.3)] * 4


def test_importing_the_sdk_stays_light() -> None:
    heavy = ("trio", "typing", "asyncio", "dataclasses", "inspect", "logging")
    code = f"import sys, spear_actors.agent; print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


async def test_an_invoke_that_fits_a_client_frame_fits_the_agent_link(tmp_path: Path) -> None:
    """The usable payload of an invoke is what fits in the client's frame: the node's
    execute request to the agent (the payload plus its envelope) fits the agent link."""

    def invoke_body(payload: bytes) -> bytes:
        params = {
            "task_name": "big",
            "function_name": "size",
            "parameters": [payload],
            "context": {"timeout_ms": 60_000},
        }
        return encode_message(Request(1, "invoke", params))

    overhead = len(invoke_body(b"p" * 100_000)) - 100_000
    payload = b"p" * (DEFAULT_MAX_FRAME_SIZE - overhead)
    assert len(invoke_body(payload)) == DEFAULT_MAX_FRAME_SIZE  # the largest invoke a client may send
    async with open_node(fast_config(tmp_path)) as node:
        response = await node.invoke(
            "size", [payload], task_name="big", artifact_spec=agent_spec(AGENT), context={"timeout_ms": 60_000}
        )
    assert response["result"] == len(payload)


async def test_the_agent_exits_when_the_node_falls_silent(tmp_path: Path) -> None:
    welcomed = trio.Event()

    async def silent_node(transport: Transport) -> None:
        hello = decode_message(await transport.receive_body() or b"")
        assert isinstance(hello, Hello)
        welcome = Welcome(heartbeat_interval_ms=100, heartbeat_timeout_ms=500)
        await transport.send_bodies([encode_message(welcome)])
        welcomed.set()
        await trio.sleep_forever()  # reads nothing more, sends nothing more

    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(partial(serve_endpoint, f"unix://{tmp_path}/c.sock", silent_node))
        async with agent_process(str(endpoint), AGENT) as process:
            with trio.fail_after(30):  # generous: a real process on a busy machine
                await welcomed.wait()
                await process.wait()
            assert process.returncode == 0
        nursery.cancel_scope.cancel()


async def test_an_agent_with_a_thousand_functions_is_welcomed(tmp_path: Path) -> None:
    connections: list[Connection] = []
    ready = trio.Event()

    async def node(transport: Transport) -> None:
        async with accept_connection(transport, authenticator=token_authenticator(SECRET)) as connection:
            connections.append(connection)
            ready.set()
            await connection.wait_closed()

    script = Path(__file__).resolve().parent / "many_functions_agent.py"
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(partial(serve_endpoint, f"unix://{tmp_path}/d.sock", node))
        async with agent_process(str(endpoint), script) as process:
            with trio.fail_after(30):
                await ready.wait()
                answer = await connections[0].request("execute", {"function": "function_number_0999"})
            assert answer["value"] == 999
            assert process.returncode is None
        nursery.cancel_scope.cancel()

"""Real agent processes for the SDK's tests, and a node's side of the link driven by hand."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import trio

from spear_actors.protocol.messages import Hello, Message, Welcome, decode_message, encode_message
from spear_actors.protocol.transports import Transport, serve_endpoint

from ..conftest import EXAMPLE_AGENT

SECRET = "s3cret"


@asynccontextmanager
async def agent_process(address: str, script: Path) -> AsyncIterator[trio.Process]:
    """Run the agent *script* dialing *address* with :data:`SECRET`; killed (and
    resumed first, if stopped) and reaped on the way out."""
    env = {**os.environ, "SERVICE_ADDR": address, "SECRET": SECRET}
    process = await trio.lowlevel.open_process([sys.executable, str(script)], env=env)
    try:
        yield process
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                os.kill(process.pid, signal.SIGCONT)
                process.kill()
            await process.wait()


class HandNode:
    """The node's side of one agent link, message by message: what the agent sends
    is decoded as it is (a torn or interleaved frame fails the decoding)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    async def send(self, *messages: Message) -> None:
        """Send *messages* in one write."""
        await self.transport.send_bodies([encode_message(message) for message in messages])

    async def receive(self) -> Message:
        body = await self.transport.receive_body()
        assert body is not None, "the agent closed the link"
        return decode_message(body)


@asynccontextmanager
async def hand_node(tmp_path: Path, script: Path = EXAMPLE_AGENT) -> AsyncIterator[HandNode]:
    """An agent process dialing a node of ours, welcomed (no heartbeats from the
    agent for a minute); yields once the link is open."""
    opened: trio.MemorySendChannel[HandNode]
    opened, arrivals = trio.open_memory_channel[HandNode](1)

    async def accept(transport: Transport) -> None:
        hello = decode_message(await transport.receive_body() or b"")
        assert isinstance(hello, Hello) and hello.auth == SECRET
        welcome = Welcome(heartbeat_interval_ms=60_000, heartbeat_timeout_ms=120_000)
        await transport.send_bodies([encode_message(welcome)])
        await opened.send(HandNode(transport))
        await trio.sleep_forever()  # the transport stays open while the test uses it

    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(partial(serve_endpoint, f"unix://{tmp_path}/hand.sock", accept))
        async with agent_process(str(endpoint), script):
            with trio.fail_after(30):  # a real process starting on a busy machine
                node = await arrivals.receive()
            yield node
        nursery.cancel_scope.cancel()

"""One websocket carrying lock-stepped callers (not a harness: `make bench` skips it)."""

from __future__ import annotations

import msgpack
import trio
import trio_websocket


class PipelinedWs:
    """One websocket with callers correlated in FIFO order (the echo keeps order).

    Each ``call`` sends *body* and waits until ``read`` (run as a task) has taken the
    answer that comes back in its turn.
    """

    def __init__(self, ws: trio_websocket.WebSocketConnection, body: bytes) -> None:
        self.ws = ws
        self.waiters: list[trio.Event] = []
        self.body = body

    async def call(self) -> None:
        done = trio.Event()
        self.waiters.append(done)
        await self.ws.send_message(self.body)
        await done.wait()

    async def read(self) -> None:
        while True:
            msgpack.unpackb(await self.ws.get_message())
            self.waiters.pop(0).set()

"""Two liveness rules of the connection, over real transports (issue 11 (a) and (b)).

(a) A task waiting to send never stops the connection reading: a peer that writes a
    lot before it reads gets read, so both sides progress.
(b) A caller is never held by other callers' data: its cancellation and its request's
    deadline take effect while the link is blocked (its request is taken back, or
    cancelled), whatever other tasks queued.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import trio
import trio.testing

from spear_actors.errors import ErrorCode, SpearError
from spear_actors.protocol.connection import Connection, ConnectionConfig
from spear_actors.protocol.messages import Pong, Request, Response, Welcome
from spear_actors.protocol.transports import Transport

from .peers import Raw, connected, serving

MIB = 1024 * 1024
# More than the kernel buffers both ways hold on loopback (tcp autotunes to a few MiB).
REQUEST_BYTES = 12 * MIB
FLOOD_BYTES = 24 * MIB
CALM = Welcome(heartbeat_interval_ms=600_000, heartbeat_timeout_ms=1_200_000)
# A stuck link ends at the heartbeat timeout: the test then fails rather than hangs.
BRISK = Welcome(heartbeat_interval_ms=1_000, heartbeat_timeout_ms=10_000)


async def test_a_caller_blocked_sending_does_not_stop_reading(url: str) -> None:
    """(a): our big request and the peer's big writes cross; the peer reads only
    after it has written everything."""

    async def writes_before_reading(transport: Transport) -> None:
        raw = Raw(transport)
        await raw.welcome(BRISK)
        await raw.send(*(Pong(i, b"x" * MIB) for i in range(FLOOD_BYTES // MIB)))
        request = await raw.receive_skipping_pings()
        assert isinstance(request, Request)
        await raw.send(Response(request.id, len(request.params)))
        await trio.sleep_forever()

    async with (
        serving(url, on_transport=writes_before_reading, max_frame_size=32 * MIB) as server,
        connected(server, config=ConnectionConfig(max_frame_size=32 * MIB)) as connection,
    ):
        # deadlocked, the link would die at the heartbeat timeout (UNAVAILABLE)
        assert await connection.request("size", b"y" * REQUEST_BYTES) == REQUEST_BYTES


async def _blocked_link(url: str) -> Any:
    """A server that welcomes and then never reads again."""

    async def never_reads(transport: Transport) -> None:
        await Raw(transport).welcome(CALM)
        await trio.sleep_forever()

    return serving(url, on_transport=never_reads)


@pytest.mark.parametrize("how", ["cancel", "timeout"])
async def test_a_caller_leaves_at_its_deadline_while_others_fill_the_link(
    url: str, mock_clock: trio.testing.MockClock, how: str
) -> None:
    """(b): a caller with a 0.3 s deadline (its own timeout, or a cancel scope around
    it) starts a big request on a link the peer does not read, and eight more callers
    queue theirs behind it: it leaves at 0.3 s, not when all of that is written."""
    left_after: list[float] = []

    async def filler(connection: Connection) -> None:
        with contextlib.suppress(SpearError):
            await connection.request("fill", b"f" * (2 * MIB))

    async def mine(connection: Connection) -> None:
        start = trio.current_time()
        if how == "timeout":
            with pytest.raises(SpearError) as info:
                await connection.request("mine", b"m" * (8 * MIB), timeout=0.3)
            assert info.value.code == ErrorCode.DEADLINE_EXCEEDED
        else:
            with trio.move_on_after(0.3):
                await connection.request("mine", b"m" * (8 * MIB))
        left_after.append(trio.current_time() - start)

    # The callers' nursery outlives the connection: a caller held on a blocked link
    # is set free when the connection closes under it, so this test ends either way.
    async with (
        trio.open_nursery() as callers,
        await _blocked_link(url) as server,
        connected(server) as connection,
    ):
        callers.start_soon(mine, connection)  # time stands still until autojump
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(8):
            callers.start_soon(filler, connection)
        await trio.testing.wait_all_tasks_blocked()
        # Everyone now waits on a link that takes nothing; from here on time jumps
        # whenever all tasks wait, so a caller held by others' data would come back
        # only when the connection dies (20 minutes, CALM).
        mock_clock.autojump_threshold = 0
        with trio.move_on_after(60):
            while not left_after:
                await trio.sleep(0.05)
        assert not connection.closed
        callers.cancel_scope.cancel()
    assert left_after == [pytest.approx(0.3)]

"""The write path of a connection (protocol/outbox.py) over real sockets: bodies
put by many tasks leave in the order they were put, whole, through a peer that
reads slowly or stops; a request once written leaves even if its sender is
cancelled (a cancel follows it); flushing and closing send what is pending."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from spear_actors.errors import SpearError
from spear_actors.protocol.calls import IncomingRequest
from spear_actors.protocol.outbox import Outbox
from spear_actors.protocol.transports import Transport

from .peers import PROMPTLY, Raw, connected, raw_client, serving

HIGH_WATER = 1024 * 1024


def _body(index: int, size: int) -> bytes:
    return index.to_bytes(4, "little") + bytes([index % 251]) * size


def _check(body: bytes) -> int:
    index = int.from_bytes(body[:4], "little")
    assert body[4:] == bytes([index % 251]) * (len(body) - 4), f"body {index} is damaged"
    return index


@asynccontextmanager
async def outbox_to_raw(url: str) -> AsyncIterator[tuple[Outbox, Raw]]:
    """An outbox (with its writer task) on the server side of a real *url* link, and a
    raw client reading what it sends."""
    got: trio.MemorySendChannel[Transport]
    got, take = trio.open_memory_channel[Transport](1)
    done = trio.Event()

    async def on_transport(transport: Transport) -> None:
        await got.send(transport)
        await done.wait()

    async with serving(url, on_transport=on_transport) as server, raw_client(server) as raw:
        await raw.transport.send_bodies([b"start"])  # a websocket server sees the client once it sends
        transport = await take.receive()
        lost: list[SpearError] = []
        outbox = Outbox(transport, high_water=HIGH_WATER, on_lost=lost.append)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.run_writer)
            await trio.testing.wait_all_tasks_blocked()  # the writer task runs
            try:
                yield outbox, raw
            finally:
                outbox.close()
                done.set()
        assert lost == []


async def test_many_senders_on_one_connection_keep_order_and_integrity(url: str) -> None:
    rng = random.Random(15)
    sizes = [rng.choice([10, 100, 3_000, 200_000]) for _ in range(400)]
    put_order: list[int] = []
    async with outbox_to_raw(url) as (outbox, raw):

        async def sender(first: int) -> None:
            for index in range(first, len(sizes), 20):
                await outbox.wait_room()
                outbox.put(_body(index, sizes[index]))
                put_order.append(index)
                await trio.lowlevel.checkpoint()  # the others put in the same pass

        received: list[int] = []
        with trio.fail_after(PROMPTLY * 6):
            async with trio.open_nursery() as nursery:
                for first in range(20):
                    nursery.start_soon(sender, first)
                while len(received) < len(sizes):
                    body = await raw.transport.receive_body()
                    assert body is not None
                    received.append(_check(body))
                    if len(received) % 50 == 0:
                        await trio.sleep(0.01)  # a slow reader: the socket fills now and then
            await outbox.flush()
        assert received == put_order


async def test_a_peer_that_stops_reading_holds_the_writer_and_gets_everything_later(url: str) -> None:
    async with outbox_to_raw(url) as (outbox, raw):
        for index in range(40):
            outbox.put(_body(index, 400_000))  # 16 MB: more than any socket buffers
        await trio.testing.wait_all_tasks_blocked()
        # the socket is full: the writer task waits with the rest (the heartbeat sees
        # how long: protocol/link.py), later bodies are queued and counted
        assert outbox.write_started is not None
        assert outbox.queued_bytes == 0
        outbox.put(_body(40, 2 * HIGH_WATER))
        assert outbox.queued_bytes > HIGH_WATER
        with trio.move_on_after(0.2) as scope:
            await outbox.wait_room()  # a sender that waits for room waits
        assert scope.cancelled_caught
        with trio.fail_after(PROMPTLY * 6):
            received = [_check(await _receive(raw)) for _ in range(41)]
            await outbox.flush()
        assert received == list(range(41))
        assert outbox.write_started is None and outbox.queued_bytes == 0


async def _receive(raw: Raw) -> bytes:
    body = await raw.transport.receive_body()
    assert body is not None
    return body


async def test_flush_then_close_loses_nothing(url: str) -> None:
    async with outbox_to_raw(url) as (outbox, raw):
        for index in range(5):
            outbox.put(_body(index, 1000))
        # flush, as a connection does before it closes: then nothing is held back
        await outbox.flush()
        outbox.close()  # what was not sent by now never will be
        with trio.fail_after(PROMPTLY):
            assert [_check(await _receive(raw)) for _ in range(5)] == list(range(5))


async def test_a_sender_cancelled_after_its_request_was_accepted_cancels_it_at_the_peer(url: str) -> None:
    started = trio.Event()
    cancelled = trio.Event()

    async def handler(request: IncomingRequest) -> Any:
        if request.method == "hang":
            started.set()
            try:
                await trio.sleep_forever()
            finally:
                cancelled.set()
        return request.params

    async with serving(url, handler) as server, connected(server) as connection:
        with trio.CancelScope() as scope:
            scope.cancel()  # cancelled before its first wait: right after the put
            await connection.request("hang", b"x" * 300_000)
        with trio.fail_after(PROMPTLY):
            await started.wait()  # the request left whole, after its sender was gone
            await cancelled.wait()  # and the cancel after it
            assert await connection.request("echo", "still open") == "still open"


async def test_closing_a_connection_sends_the_request_it_was_writing(url: str) -> None:
    big = b"z" * (3 * 1024 * 1024)
    received = trio.Event()
    sizes: list[int] = []

    async def handler(request: IncomingRequest) -> Any:
        sizes.append(len(request.params))
        received.set()
        await trio.sleep_forever()

    async with serving(url, handler) as server:
        async with connected(server) as connection, trio.open_nursery() as nursery:

            async def call() -> None:
                try:
                    await connection.request("take", big)
                except SpearError:
                    pass  # UNAVAILABLE: the connection closed under it

            nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            await connection.aclose()
        with trio.fail_after(PROMPTLY):
            await received.wait()
    assert sizes == [len(big)]

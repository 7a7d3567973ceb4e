"""The connection's fast paths, over real transports.

* The task that reads a request serves it, and its successor takes over reading;
  requests that arrive together in one read each get a task of their own.
* A caller on a connection that serves nothing reads its own answer (it *leads*);
  other callers' answers, the peer's requests and the link's death reach everyone
  whoever is reading.
* Small messages are written without waiting; a large one that the socket takes
  only in part is finished by the writing task, in order with everything else.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from spear_actors.errors import ErrorCode, SpearError
from spear_actors.protocol.calls import IncomingRequest
from spear_actors.protocol.messages import Cancel, Error, Request, Response, StreamEnd, StreamItem, Welcome
from spear_actors.protocol.transports import SocketTransport, Transport

from .peers import PROMPTLY, Raw, connected, raw_client, serving


async def echo_or_hang(request: IncomingRequest) -> Any:
    """``hang`` never answers; any other method echoes its params."""
    if request.method == "hang":
        await trio.sleep_forever()
    return request.params


async def test_requests_arriving_in_one_read_each_get_a_task_of_their_own(url: str) -> None:
    n = 10
    tasks: dict[int, trio.lowlevel.Task] = {}
    all_in = trio.Event()

    async def handler(request: IncomingRequest) -> Any:
        tasks[request.id] = trio.lowlevel.current_task()
        if len(tasks) == n:
            all_in.set()
        await all_in.wait()  # every handler is running at once, none blocks the others
        return request.params

    async with serving(url, handler) as server, raw_client(server) as client:
        await client.hello()
        with trio.fail_after(PROMPTLY):
            # one write: on tcp and unix the server reads them all at once
            await client.send(*(Request(i, "echo", i) for i in range(1, n + 1)))
            answers = [await client.receive_skipping_pings() for _ in range(n)]
    assert sorted(a.result for a in answers if isinstance(a, Response)) == list(range(1, n + 1))
    assert len(set(tasks.values())) == n
    # requests were served by the task that read them (the first of each read; on
    # websocket, where every message is a read of its own, all of them)
    assert any(t.name.endswith("._reader") for t in tasks.values())


class Spawns(trio.abc.Instrument):
    def __init__(self) -> None:
        self.names: list[str] = []

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.names.append(task.name)


async def test_requests_of_one_read_answered_at_once_are_all_served_by_the_reader(url: str) -> None:
    # No task per request when none waits: the reader serves one after the other,
    # and their answers leave together.
    n = 40
    async with serving(url, echo_or_hang) as server, raw_client(server) as client:
        await client.hello()
        await client.send(Request(1, "echo", 0))
        await client.receive_skipping_pings()
        spawns = Spawns()
        trio.lowlevel.add_instrument(spawns)
        try:
            with trio.fail_after(PROMPTLY):
                await client.send(*(Request(i, "echo", i) for i in range(2, n + 2)))
                answers = [await client.receive_skipping_pings() for _ in range(n)]
        finally:
            trio.lowlevel.remove_instrument(spawns)
    assert [a.result if isinstance(a, Response) else a for a in answers] == list(range(2, n + 2))  # in order
    assert [name for name in spawns.names if "serving" in name] == []


async def test_a_deadline_of_a_request_answered_inline_does_not_outlive_it(
    url: str, mock_clock: trio.testing.MockClock
) -> None:
    # The reader serves inline requests under one cancel scope of its own: the
    # deadline it carried for one request must be gone before it reads again.
    async with serving(url, echo_or_hang) as server, connected(server) as connection:
        assert await connection.request("echo", 1, timeout=0.5) == 1
        mock_clock.jump(5.0)  # far past that deadline, with the reader waiting to read
        mock_clock.autojump_threshold = 0.5  # a hang ends at fail_after, not never
        with trio.fail_after(PROMPTLY):
            assert await connection.request("echo", 2) == 2
            with pytest.raises(SpearError) as info:  # and a later deadline still works
                await connection.request("hang", None, timeout=1.0)
            assert info.value.code is ErrorCode.DEADLINE_EXCEEDED
            assert await connection.request("echo", 3) == 3


async def test_a_request_behind_a_hanging_one_in_the_same_read_is_answered(url: str) -> None:
    async with serving(url, echo_or_hang) as server, raw_client(server) as client:
        await client.hello()
        with trio.fail_after(PROMPTLY):
            await client.send(Request(1, "hang", None), Request(2, "echo", "behind"))
            answer = await client.receive_skipping_pings()
            assert isinstance(answer, Response) and (answer.id, answer.result) == (2, "behind")
            # and the hanging one is still cancellable by the peer
            await client.send(Cancel(1, "enough"))
            answer = await client.receive_skipping_pings()
    assert isinstance(answer, Error) and (answer.id, answer.code) == (1, ErrorCode.CANCELLED.value)


async def test_a_cancelled_leader_hands_reading_over(url: str) -> None:
    gate = trio.Event()

    async def handler(request: IncomingRequest) -> Any:
        if request.method == "hang":
            await trio.sleep_forever()
        await gate.wait()
        return request.params

    async with serving(url, handler) as server, connected(server) as connection:
        answers: list[Any] = []
        with trio.fail_after(PROMPTLY):
            async with trio.open_nursery() as nursery:
                leader_scope = trio.CancelScope()

                async def leader() -> None:
                    with leader_scope:
                        await connection.request("hang")

                async def follower() -> None:
                    answers.append(await connection.request("gated", "after the leader left"))

                nursery.start_soon(leader)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(follower)
                await trio.testing.wait_all_tasks_blocked()
                leader_scope.cancel()  # on tcp and unix the first caller leads the reads
                await trio.testing.wait_all_tasks_blocked()
                gate.set()  # the follower's answer comes only now: someone must read it
    assert answers == ["after the leader left"]


async def test_many_callers_mixing_leaders_and_followers_all_get_their_answers(url: str) -> None:
    async def handler(request: IncomingRequest) -> Any:
        for _ in range(request.params % 3):
            await trio.lowlevel.checkpoint()
        return request.params * 2

    results: dict[int, int] = {}
    async with serving(url, handler) as server, connected(server) as connection:

        async def caller(first: int) -> None:
            for i in range(first, first + 50):  # sequential per caller: each may lead
                results[i] = await connection.request("double", i)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for c in range(20):
                    nursery.start_soon(caller, c * 50)
    assert results == {i: 2 * i for i in range(1000)}


async def test_peer_request_read_by_a_leader_is_refused_not_found(url: str) -> None:
    got_request = trio.Event()
    refusal: list[Any] = []

    async def asking_peer(transport: Transport) -> None:
        raw = Raw(transport)
        await raw.welcome(Welcome())
        request = await raw.receive_skipping_pings()
        assert isinstance(request, Request)
        got_request.set()
        await raw.send(Request(7, "anything", None))  # to a client that serves nothing
        refusal.append(await raw.receive_skipping_pings())
        await raw.send(Response(request.id, "done"))
        await trio.sleep_forever()

    async with serving(url, on_transport=asking_peer) as server, connected(server) as connection:
        with trio.fail_after(PROMPTLY):
            assert await connection.request("go") == "done"
    [answer] = refusal
    assert isinstance(answer, Error) and (answer.id, answer.code) == (7, ErrorCode.NOT_FOUND.value)


async def test_a_leader_fails_unavailable_at_once_when_the_peer_vanishes(url: str) -> None:
    async def vanishing_peer(transport: Transport) -> None:
        raw = Raw(transport)
        await raw.welcome(Welcome())
        assert isinstance(await raw.receive_skipping_pings(), Request)
        await raw.abort()

    async with serving(url, on_transport=vanishing_peer) as server, connected(server) as connection:
        with trio.fail_after(PROMPTLY), pytest.raises(SpearError) as info:
            await connection.request("slow", timeout=60)
    assert info.value.code == ErrorCode.UNAVAILABLE


async def test_a_message_larger_than_the_socket_buffer_arrives_whole_among_small_ones(url: str) -> None:
    big = bytes(range(256)) * (8 * 4096)  # 8 MiB: more than one non-blocking write takes

    async with serving(url, echo_or_hang) as server, connected(server) as connection:
        results: dict[str, Any] = {}

        async def call(key: str, params: Any) -> None:
            results[key] = await connection.request("echo", params)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, "big", big)
                for i in range(20):
                    nursery.start_soon(call, f"small {i}", i)
    assert results.pop("big") == big
    assert results == {f"small {i}": i for i in range(20)}


async def test_a_blocked_answer_never_stops_the_reading_of_the_next_request(url: str) -> None:
    # A raw client writes two large requests in one go and reads nothing until that
    # write is done. The first answer is too large for the socket, so its write waits
    # for the client to read; the client reads only after the server has read the
    # second request. So someone must read while the first answer waits: served
    # inline by the reader, the request hands reading over before that write waits.
    big = b"y" * (6 * 1024 * 1024)

    async with serving(url, echo_or_hang) as server, raw_client(server) as client:
        await client.hello()
        with trio.fail_after(30):
            await client.send(Request(1, "echo", big), Request(2, "echo", big))
            answers = [await client.receive_skipping_pings() for _ in range(2)]
    assert sorted((a.id, a.result == big) for a in answers if isinstance(a, Response)) == [(1, True), (2, True)]


async def test_answers_of_one_read_arrive_even_when_the_last_handler_to_run_waits(url: str) -> None:
    # Handlers started by one read write their answers together, when the last of
    # them runs; if that one waits instead, the others' answers must still go out.
    async with serving(url, echo_or_hang) as server, raw_client(server) as client:
        await client.hello()
        requests = [Request(1, "echo", 1), Request(2, "echo", 2), Request(3, "hang", None)]
        requests += [Request(4, "echo", 4), Request(5, "hang", None), Request(6, "hang", None)]
        with trio.fail_after(PROMPTLY):
            await client.send(*requests)
            answers = [await client.receive_skipping_pings() for _ in range(3)]
    assert sorted(a.id for a in answers if isinstance(a, Response)) == [1, 2, 4]


async def test_reading_or_waiting_on_a_closed_socket_is_unavailable() -> None:
    a, b = trio.socket.socketpair()
    with b:
        transport = SocketTransport(trio.SocketStream(a))
        a.close()
        with pytest.raises(SpearError) as info:
            await transport.receive_body()
        assert info.value.code == ErrorCode.UNAVAILABLE
        await transport.wait_readable()  # returns: the read that follows reports it
        assert not transport.send_nowait([b"x"])  # kept for send_bodies, which reports it
        with pytest.raises(SpearError):
            await transport.send_bodies([])


@pytest.mark.parametrize("scheme", ["ws", "wss"])
async def test_websocket_answers_written_without_waiting_stay_whole_when_the_client_stops_reading(scheme: str) -> None:
    """A server websocket writes answers from the task that made them; what the socket
    does not take goes first on the next send. 24 answers of 1 MiB to a client whose
    reads stall (its socket fills) all arrive whole, with pings in between."""

    async def echo(request: IncomingRequest) -> Any:
        return request.params

    big = 1024 * 1024
    async with serving(f"{scheme}://127.0.0.1:0", echo) as server, raw_client(server) as peer:
        await peer.hello()
        answers: dict[int, Any] = {}
        async with trio.open_nursery() as nursery:
            # the requests go while the client does not read (a websocket connection
            # reads only when asked): the server's answers fill the socket
            nursery.start_soon(peer.send, *[Request(i, "echo", bytes([i]) * big) for i in range(1, 25)])
            await trio.sleep(0.2)  # let the server's writes meet a full socket
            with trio.fail_after(PROMPTLY * 4):
                while len(answers) < 24:
                    message = await peer.receive_skipping_pings()
                    assert isinstance(message, Response), message
                    answers[message.id] = message.result
        assert answers == {i: bytes([i]) * big for i in range(1, 25)}
        await peer.send(Request(99, "echo", "after"))
        with trio.fail_after(PROMPTLY):
            assert (await peer.receive_skipping_pings()) == Response(99, "after")


@pytest.mark.parametrize("scheme", ["ws", "wss"])
async def test_websocket_client_requests_written_without_waiting_arrive_whole(scheme: str) -> None:
    """A client websocket writes requests from the calling tasks too: 24 concurrent
    requests of 1 MiB (each larger than the socket takes at once) all come back whole."""

    async def echo(request: IncomingRequest) -> Any:
        return request.params

    big = 1024 * 1024
    results: dict[int, Any] = {}
    async with serving(f"{scheme}://127.0.0.1:0", echo) as server, connected(server) as connection:

        async def call(i: int) -> None:
            results[i] = await connection.request("echo", bytes([i]) * big)

        with trio.fail_after(PROMPTLY * 4):
            async with trio.open_nursery() as nursery:
                for i in range(1, 25):
                    nursery.start_soon(call, i)
        assert results == {i: bytes([i]) * big for i in range(1, 25)}
        assert await connection.request("echo", "after") == "after"


async def test_between_calls_a_stream_gets_its_items_and_the_peer_closing_is_noticed(url: str) -> None:
    """After a lead with nothing else in flight the reader task may sleep a while
    (calls one after another lead in turn); a stream, which nobody leads, and the
    peer's close are still read without waiting for another call."""
    leave = trio.Event()

    async def peer(transport: Transport) -> None:
        raw = Raw(transport)
        await raw.welcome(Welcome())
        for i in range(3):
            request = await raw.receive_skipping_pings()
            assert isinstance(request, Request)
            await raw.send(Response(request.id, i))
        stream = await raw.receive_skipping_pings()
        assert isinstance(stream, Request)
        await raw.send(StreamItem(stream.id, 0, "a"), StreamItem(stream.id, 1, "b"), StreamEnd(stream.id, 2, "end"))
        await leave.wait()
        await raw.abort()

    async with serving(url, on_transport=peer) as server, connected(server) as connection:
        with trio.fail_after(PROMPTLY):
            assert [await connection.request("call") for _ in range(3)] == [0, 1, 2]
            async with connection.stream("items") as items:
                assert [item async for item in items] == ["a", "b"]
            assert items.result == "end"
            leave.set()
            await connection.wait_closed()
    assert connection.close_reason is not None and connection.close_reason.code == ErrorCode.UNAVAILABLE

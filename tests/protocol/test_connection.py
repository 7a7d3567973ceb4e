"""Connections over real transports: TCP (port 0), unix socket (temp dir), websocket (port 0).

Every test runs once per transport. Peers are either a real :class:`Connection` or a
"raw" peer that speaks the protocol by hand over a bare transport, so that the wire
behaviour (what is sent, what is answered) is checked directly.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from spear_actors.errors import ErrorCode, SpearError
from spear_actors.protocol.calls import Handler, IncomingRequest
from spear_actors.protocol.connection import Connection, ConnectionConfig
from spear_actors.protocol.framing import ProtocolError
from spear_actors.protocol.handshake import (
    open_connection,
    token_authenticator,
)
from spear_actors.protocol.messages import (
    Cancel,
    Credit,
    Error,
    Goodbye,
    Hello,
    Message,
    Ping,
    Pong,
    Request,
    Response,
    StreamEnd,
    StreamItem,
    Welcome,
    encode_message,
)
from spear_actors.protocol.transports import (
    StreamTransport,
    Transport,
    WebsocketTransport,
    open_transport,
)

from .peers import PROMPTLY, Raw, client_context_for, connected, raw_client, serving


async def standard_handler(request: IncomingRequest) -> Any:
    """The methods most tests call."""
    if request.method == "echo":
        return request.params
    if request.method == "count":
        for i in range(request.params):
            await request.send_item(i)
        return "done"
    if request.method == "hang":
        await trio.sleep_forever()
    if request.method == "fail":
        raise SpearError(ErrorCode(request.params), "failed as asked", {"why": "test"})
    if request.method == "crash":
        raise RuntimeError("boom")
    raise SpearError(ErrorCode.NOT_FOUND, f"no method {request.method!r}")


def expect_code(code: ErrorCode) -> Any:
    return pytest.raises(SpearError, match=code.value)


# -- correlation -----------------------------------------------------------------------


async def test_thousand_concurrent_requests_correlate(url: str) -> None:
    n = 1000
    arrived = 0
    all_arrived = trio.Event()

    async def handler(request: IncomingRequest) -> Any:
        nonlocal arrived
        arrived += 1
        if arrived == n:
            all_arrived.set()
        await all_arrived.wait()  # all 1,000 are in flight before any answer
        for _ in range(random.Random(request.params).randrange(5)):
            await trio.lowlevel.checkpoint()  # shuffle the order of the answers
        return {"i": request.params, "square": request.params**2}

    results: dict[int, Any] = {}
    config = ConnectionConfig(max_inflight_handlers=n)
    async with serving(url, handler, config=config) as server, connected(server) as connection:

        async def call(i: int) -> None:
            results[i] = await connection.request("square", i)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(call, i)
                await all_arrived.wait()
                assert connection.in_flight == n
    assert results == {i: {"i": i, "square": i * i} for i in range(n)}


async def test_excess_requests_wait_for_a_handler_slot(url: str) -> None:
    n, limit = 300, 8
    running = peak = 0
    release = trio.Event()

    async def handler(request: IncomingRequest) -> Any:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        return request.params

    results: list[int] = []
    config = ConnectionConfig(max_inflight_handlers=limit)
    async with serving(url, handler, config=config) as server, connected(server) as connection:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(_append, results, partial(connection.request, "x", i))
                # every request has reached the server: 8 run, the rest wait for a slot
                while not server.connections or server.connections[0].in_service < n:
                    await trio.sleep(0.001)
                await trio.testing.wait_all_tasks_blocked()
                assert running == limit
                release.set()
    assert sorted(results) == list(range(n))
    assert peak == limit


async def _append(results: list[Any], call: Callable[[], Awaitable[Any]]) -> None:
    results.append(await call())


async def test_answers_out_of_order(url: str) -> None:
    # The handler of request i waits for gate i; the gates open in reverse order and each
    # answer must have arrived before the next gate opens. (Gates rather than sleeps of
    # decreasing length keep the order independent of the machine's load.)
    n = 20
    gates = [trio.Event() for _ in range(n)]

    async def handler(request: IncomingRequest) -> Any:
        await gates[request.params].wait()
        return f"answer {request.params}"

    answered: list[int] = []
    answer_events = [trio.Event() for _ in range(n)]
    async with serving(url, handler) as server, connected(server) as connection:

        async def call(i: int) -> None:
            assert await connection.request("wait", i) == f"answer {i}"
            answered.append(i)
            answer_events[i].set()

        with trio.fail_after(PROMPTLY):
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(call, i)
                await trio.testing.wait_all_tasks_blocked()
                for i in reversed(range(n)):
                    gates[i].set()
                    await answer_events[i].wait()
    assert answered == list(reversed(range(n)))


async def test_requests_both_ways_on_one_connection(url: str) -> None:
    # Each side numbers its own requests from 1: the ids overlap and must not mix.
    async def client_handler(request: IncomingRequest) -> Any:
        return ("client", request.id, request.params)

    async def server_handler(request: IncomingRequest) -> Any:
        back = await request.connection.request("callback", request.params)
        return ("server", request.id, back)

    async with (
        serving(url, server_handler) as server,
        connected(server, handler=client_handler) as connection,
    ):
        with trio.fail_after(PROMPTLY):
            first = await connection.request("call", "a")
            second = await connection.request("call", "b")
    assert first == ["server", 1, ["client", 1, "a"]]
    assert second == ["server", 2, ["client", 2, "b"]]


# -- results and errors ----------------------------------------------------------------


@pytest.mark.parametrize("code", [ErrorCode.RESOURCE_EXHAUSTED, ErrorCode.FUNCTION_ERROR, ErrorCode.INTERNAL])
async def test_handler_spear_error_reaches_the_caller_with_its_code(url: str, code: ErrorCode) -> None:
    async with serving(url, standard_handler) as server, connected(server) as connection:
        with pytest.raises(SpearError) as info:
            await connection.request("fail", code.value)
    assert info.value.code is code
    assert info.value.message == "failed as asked"
    assert info.value.details == {"why": "test"}


async def test_handler_plain_exception_is_internal(url: str, caplog: pytest.LogCaptureFixture) -> None:
    async with serving(url, standard_handler) as server, connected(server) as connection:
        with pytest.raises(SpearError) as info:
            await connection.request("crash")
        assert info.value.code is ErrorCode.INTERNAL
        assert "RuntimeError: boom" in info.value.message
        assert await connection.request("echo", 1) == 1  # the connection survives
    assert "handler for crash failed" in caplog.text


async def test_unknown_method_is_what_the_handler_says(url: str) -> None:
    async with serving(url, standard_handler) as server, connected(server) as connection:
        with pytest.raises(SpearError) as info:
            await connection.request("no.such.method", {})
    assert info.value.code is ErrorCode.NOT_FOUND
    assert "no.such.method" in info.value.message


async def test_without_a_handler_every_method_is_not_found(url: str) -> None:
    async with serving(url, None) as server, connected(server) as connection:
        with expect_code(ErrorCode.NOT_FOUND):
            await connection.request("echo", 1)


async def test_unencodable_result_becomes_an_error_answer(url: str) -> None:
    async def handler(request: IncomingRequest) -> Any:
        return {"n": 2**64}

    async with serving(url, handler) as server, connected(server) as connection:
        with pytest.raises(SpearError, match="'result'") as info:
            await connection.request("x")
        assert info.value.code is ErrorCode.PROTOCOL_ERROR
        assert not connection.closed


async def test_too_large_params_fail_locally_before_sending(url: str) -> None:
    async with serving(url, standard_handler) as server, connected(server) as connection:
        with pytest.raises(ProtocolError, match="'params'"):
            await connection.request("echo", [2**64])
        assert connection.in_flight == 0
        assert await connection.request("echo", "still fine") == "still fine"


async def test_frames_over_the_limit_are_refused_before_sending(url: str) -> None:
    async def handler(request: IncomingRequest) -> Any:
        return b"x" * request.params

    async with (
        serving(url, handler, config=ConnectionConfig(max_frame_size=1024)) as server,
        connected(server) as connection,
    ):
        assert connection.config.max_frame_size == 1024  # learnt from the welcome
        with pytest.raises(SpearError, match="exceeds the frame limit of 1024") as info:
            await connection.request("blob", b"x" * 2000)
        assert info.value.code is ErrorCode.RESOURCE_EXHAUSTED
        with pytest.raises(SpearError, match="exceeds the frame limit of 1024") as info:
            await connection.request("blob", 2000)  # the answer would be too big
        assert info.value.code is ErrorCode.RESOURCE_EXHAUSTED
        assert await connection.request("blob", 10) == b"x" * 10


async def test_send_item_on_a_unary_request_is_refused(url: str) -> None:
    async with serving(url, standard_handler) as server, connected(server) as connection:
        with expect_code(ErrorCode.FAILED_PRECONDITION):
            await connection.request("count", 3)


# -- streams ---------------------------------------------------------------------------


async def test_stream_yields_items_in_order_then_the_result(url: str) -> None:
    async with serving(url, standard_handler) as server, connected(server) as connection:
        with trio.fail_after(PROMPTLY):
            async with connection.stream("count", 50, window=4) as items:
                received = [item async for item in items]
            assert items.result == "done"
            assert items.finished
    assert received == list(range(50))


async def test_slow_consumer_bounds_the_producer(url: str) -> None:
    window = 4
    total = 40
    produced = consumed = lead = 0

    async def handler(request: IncomingRequest) -> Any:
        nonlocal produced, lead
        for i in range(total):
            await request.send_item(i)
            produced += 1
            lead = max(lead, produced - consumed)
            assert produced - consumed <= window, (produced, consumed)
        return produced

    async with serving(url, handler) as server, connected(server) as connection:
        with trio.fail_after(PROMPTLY * 2):
            async with connection.stream("produce", window=window) as items:
                async for item in items:
                    assert item == consumed
                    consumed += 1
                    # a slow consumer: let the producer run as far ahead as it can
                    await trio.testing.wait_all_tasks_blocked(cushion=0.002)
                    assert items.buffered <= window
            assert items.result == total
    assert consumed == total
    assert lead == window  # the producer did get ahead, and exactly as far as allowed


async def test_stream_error_after_items(url: str) -> None:
    async def handler(request: IncomingRequest) -> Any:
        for i in range(3):
            await request.send_item(i)
        raise SpearError(ErrorCode.FUNCTION_ERROR, "died after three")

    received: list[int] = []
    async with serving(url, handler) as server, connected(server) as connection:
        with pytest.raises(SpearError, match="died after three") as info:
            async with connection.stream("three") as items:
                async for item in items:
                    received.append(item)
    assert info.value.code is ErrorCode.FUNCTION_ERROR
    assert received == [0, 1, 2]


async def test_leaving_a_stream_early_cancels_the_producer(url: str) -> None:
    cancelled = trio.Event()
    reason: list[str | None] = []

    async def handler(request: IncomingRequest) -> Any:
        if request.method != "forever":
            return await standard_handler(request)
        try:
            for i in range(10**9):
                await request.send_item(i)
        except trio.Cancelled:
            reason.append(request.cancel_reason)
            cancelled.set()
            raise

    async with serving(url, handler) as server, connected(server) as connection:
        with trio.fail_after(PROMPTLY):
            async with connection.stream("forever", window=2) as items:
                async for item in items:
                    if item == 5:
                        break
            await cancelled.wait()
            assert await connection.request("echo", "after") == "after"
    assert reason == ["consumer left the stream"]


async def test_stream_timeout_is_deadline_exceeded(url: str) -> None:
    async with serving(url, standard_handler) as server, connected(server) as connection:
        with trio.fail_after(PROMPTLY), expect_code(ErrorCode.DEADLINE_EXCEEDED):
            async with connection.stream("hang", timeout=0.05) as items:
                async for _ in items:
                    pass


# -- cancellation and deadlines --------------------------------------------------------


def _hang_recorder() -> tuple[Handler, trio.Event, trio.Event, list[IncomingRequest]]:
    started, observed = trio.Event(), trio.Event()
    seen: list[IncomingRequest] = []

    async def handler(request: IncomingRequest) -> Any:
        if request.method != "hang":
            return await standard_handler(request)
        seen.append(request)
        started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            observed.set()
            raise

    return handler, started, observed, seen


async def test_cancel_reaches_the_handler(url: str) -> None:
    handler, started, observed, seen = _hang_recorder()
    async with serving(url, handler) as server, connected(server) as connection:
        with trio.fail_after(PROMPTLY):
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(connection.request, "hang")
                    await started.wait()
                    scope.cancel()
            assert scope.cancelled_caught
            await observed.wait()
            assert seen[0].cancel_reason == "caller cancelled"
            assert connection.in_flight == 0
            assert await connection.request("echo", "alive") == "alive"
            assert server.connections[0].in_service == 0


async def test_request_timeout_is_deadline_exceeded_and_cancels_the_handler(url: str) -> None:
    handler, _, observed, seen = _hang_recorder()
    async with serving(url, handler) as server, connected(server) as connection:
        with trio.fail_after(PROMPTLY):
            with pytest.raises(SpearError, match=r"no answer within 0\.2s") as info:
                await connection.request("hang", timeout=0.2)
            assert info.value.code is ErrorCode.DEADLINE_EXCEEDED
            await observed.wait()
    assert seen[0].timeout_ms == 200  # the deadline travelled with the request


async def test_wire_level_exchange(url: str) -> None:
    """What a client in another language sees: streams with credit, deadlines, cancel,
    stray answers, ping, goodbye — message by message."""
    async with serving(url, standard_handler) as server, raw_client(server) as raw:
        with trio.fail_after(PROMPTLY):
            welcome = await raw.hello(Hello(role="cli", peer_id="raw-1"))
            assert (welcome.version, welcome.role) == (1, "node")
            assert (welcome.heartbeat_interval_ms, welcome.heartbeat_timeout_ms) == (5000, 15000)
            assert welcome.max_frame_size == 16 * 1024 * 1024

            # a stream with an initial credit of 2: exactly two items come ...
            await raw.send(Request(1, "count", 5, window=2))
            assert await raw.receive() == StreamItem(1, 0, 0)
            assert await raw.receive() == StreamItem(1, 1, 1)
            with trio.move_on_after(0.1) as idle:
                await raw.receive()
            assert idle.cancelled_caught, "the producer sent more than its credit"
            # ... and three more once three more are granted, then the end with seq = count
            await raw.send(Credit(1, 3))
            assert [await raw.receive() for _ in range(3)] == [StreamItem(1, i, i) for i in (2, 3, 4)]
            assert await raw.receive() == StreamEnd(1, 5, "done")

            # the callee enforces a deadline that travels with the request
            await raw.send(Request(2, "hang", timeout_ms=50))
            answer = await raw.receive()
            assert isinstance(answer, Error)
            assert (answer.id, answer.code) == (2, "DEADLINE_EXCEEDED")

            # a cancel is confirmed with CANCELLED
            await raw.send(Request(3, "hang"), Cancel(3, "changed my mind"))
            assert await raw.receive() == Error(3, "CANCELLED", "changed my mind")

            # answers to ids we never asked about are ignored; the connection goes on
            await raw.send(Response(99, "stray"), StreamItem(98, 0), Error(97, "INTERNAL"))
            await raw.send(Request(4, "echo", {"k": b"v"}))
            assert await raw.receive() == Response(4, {"k": b"v"})

            # errors carry the handler's code; unary answers are responses
            await raw.send(Request(5, "fail", "NOT_FOUND"))
            assert await raw.receive() == Error(5, "NOT_FOUND", "failed as asked", {"why": "test"})

            await raw.send(Ping(7, b"\x01\x02"))
            assert await raw.receive() == Pong(7, b"\x01\x02")

            await raw.send(Goodbye("done"))
            assert await raw.receive_skipping_pings() is None  # the server closes


@pytest.mark.parametrize(
    "bad",
    [
        encode_message(Hello()),  # a second hello
        encode_message(Welcome()),  # a welcome from the opening side
        encode_message(Request(1, "hang")),  # id 1 is still in flight
        b"\xc1",  # not msgpack
        encode_message(Hello())[:-1],  # truncated body
    ],
    ids=["hello", "welcome", "duplicate-id", "garbage", "truncated"],
)
async def test_protocol_violation_after_handshake_gets_error_and_close(url: str, bad: bytes) -> None:
    async with serving(url, standard_handler) as server:
        async with raw_client(server) as raw:
            with trio.fail_after(PROMPTLY):
                await raw.hello()
                await raw.send(Request(1, "hang"))
                await raw.transport.send_bodies([bad])
                answer = await raw.receive_skipping_pings()
                assert isinstance(answer, Error)
                assert (answer.id, answer.code) == (None, "PROTOCOL_ERROR")
                assert await raw.receive_skipping_pings() is None
        async with connected(server) as connection:  # the server keeps serving
            with trio.fail_after(PROMPTLY):
                assert await connection.request("echo", 1) == 1


# -- liveness: heartbeat, abrupt loss, goodbye ---------------------------------------------


async def test_heartbeat_death_fails_pending_requests_at_the_heartbeat_timeout(
    url: str, autojump_clock: trio.testing.MockClock
) -> None:
    # The peer is a raw transport: it completes the handshake by hand, announcing a 1 s
    # interval and a 3 s timeout, then reads (and records the pings) but never answers.
    # Real sockets with the autojump clock: time jumps only when every task is blocked,
    # and loopback I/O is ready at once, so the handshake completes before any jump.
    pings: list[Ping] = []

    async def silent_peer(transport: Transport) -> None:
        raw = Raw(transport)
        await raw.welcome(Welcome(heartbeat_interval_ms=1000, heartbeat_timeout_ms=3000))
        while (message := await raw.receive()) is not None:
            if isinstance(message, Ping):
                pings.append(message)

    async with serving(url, on_transport=silent_peer) as server, connected(server) as connection:
        assert (connection.config.heartbeat_interval, connection.config.heartbeat_timeout) == (1.0, 3.0)
        start = trio.current_time()
        with pytest.raises(SpearError, match="heartbeat timeout") as info:
            await connection.request("anything", timeout=60)
        elapsed = trio.current_time() - start
        assert info.value.code is ErrorCode.UNAVAILABLE
        assert 3.0 <= elapsed < 3.5  # at the heartbeat timeout, not at the request's 60 s
        assert connection.closed
        with expect_code(ErrorCode.UNAVAILABLE):
            await connection.request("again")
    assert [p.seq for p in pings] == [1, 2]  # one ping a second until declared dead


async def test_server_declares_a_silent_client_dead(url: str, autojump_clock: trio.testing.MockClock) -> None:
    config = ConnectionConfig(heartbeat_interval=2.0, heartbeat_timeout=5.0)
    async with serving(url, standard_handler, config=config) as server, raw_client(server) as raw:
        welcome = await raw.hello()
        assert (welcome.heartbeat_interval_ms, welcome.heartbeat_timeout_ms) == (2000, 5000)
        start = trio.current_time()
        received: list[Message] = []
        while (message := await raw.receive()) is not None:
            received.append(message)
        assert 5.0 <= trio.current_time() - start < 5.5
        assert received == [Ping(1), Ping(2)]
        assert server.connections[0].closed
        assert "heartbeat timeout" in str(server.connections[0].close_reason)


async def test_an_idle_healthy_connection_stays_up(url: str, autojump_clock: trio.testing.MockClock) -> None:
    config = ConnectionConfig(heartbeat_interval=1.0, heartbeat_timeout=3.0)
    async with serving(url, standard_handler, config=config) as server, connected(server) as connection:
        await trio.sleep(100)  # a hundred heartbeat intervals of silence from the application
        assert not connection.closed
        assert not server.connections[0].closed
        assert await connection.request("echo", "still here") == "still here"


async def test_abrupt_close_fails_pending_calls_at_once(url: str) -> None:
    got_requests = trio.Event()

    async def vanishing_peer(transport: Transport) -> None:
        raw = Raw(transport)
        await raw.welcome(Welcome())
        for _ in range(2):
            assert isinstance(await raw.receive(), Request)
        got_requests.set()
        await raw.abort()  # no goodbye, no close frame, no websocket close

    failures: list[SpearError] = []

    async def call(connection: Connection) -> None:
        with pytest.raises(SpearError) as info:
            await connection.request("slow", timeout=60)
        failures.append(info.value)

    async def consume(connection: Connection) -> None:
        with pytest.raises(SpearError) as info:
            async with connection.stream("items", timeout=60) as items:
                async for _ in items:
                    pass
        failures.append(info.value)

    async with serving(url, on_transport=vanishing_peer) as server, connected(server) as connection:
        with trio.fail_after(PROMPTLY):  # far below the calls' own 60 s deadlines
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, connection)
                nursery.start_soon(consume, connection)
        assert connection.closed
    assert [f.code for f in failures] == [ErrorCode.UNAVAILABLE] * 2


async def test_goodbye_from_the_peer_fails_pending_calls(url: str) -> None:
    handler, started, _, _ = _hang_recorder()
    async with serving(url, handler) as server, connected(server) as connection:
        with trio.fail_after(PROMPTLY):
            async with trio.open_nursery() as nursery:

                async def say_goodbye() -> None:
                    await started.wait()
                    await server.connections[0].aclose("maintenance")

                nursery.start_soon(say_goodbye)
                with pytest.raises(SpearError, match="goodbye: maintenance") as info:
                    await connection.request("hang")
        assert info.value.code is ErrorCode.UNAVAILABLE
        assert connection.closed


async def test_local_close_fails_own_pending_calls(url: str) -> None:
    handler, started, observed, _ = _hang_recorder()
    async with serving(url, handler) as server, connected(server) as connection:
        with trio.fail_after(PROMPTLY):
            async with trio.open_nursery() as nursery:

                async def close_soon() -> None:
                    await started.wait()
                    await connection.aclose("done here")

                nursery.start_soon(close_soon)
                with expect_code(ErrorCode.UNAVAILABLE):
                    await connection.request("hang")
            await observed.wait()  # the peer's handler is cancelled when the goodbye lands


# -- handshake -------------------------------------------------------------------------


async def test_wrong_token_is_rejected_and_the_server_keeps_serving(url: str) -> None:
    auth = token_authenticator("s3cret")
    async with serving(url, standard_handler, authenticator=auth) as server:
        with trio.fail_after(PROMPTLY):
            for hello in (Hello(auth="wrong"), Hello(), Hello(auth="s3cret-but-longer")):
                with pytest.raises(SpearError, match="missing or wrong token") as info:
                    async with connected(server, hello):
                        pytest.fail("the handshake should have been refused")
                assert info.value.code is ErrorCode.UNAUTHENTICATED
            async with connected(server, Hello(auth="s3cret", peer_id="agent-7")) as connection:
                assert await connection.request("echo", "in") == "in"
        assert server.accepted == 4
        assert [c.identity for c in server.connections] == ["agent-7"]


async def test_refusal_is_an_error_with_nil_id_then_close(url: str) -> None:
    async with (
        serving(url, standard_handler, authenticator=token_authenticator("s3cret")) as server,
        raw_client(server) as raw,
    ):
        with trio.fail_after(PROMPTLY):
            await raw.send(Hello(auth="nope"))
            answer = await raw.receive()
            assert isinstance(answer, Error)
            assert (answer.id, answer.code) == (None, "UNAUTHENTICATED")
            assert await raw.receive() is None


@pytest.mark.parametrize(
    ("first", "match"),
    [
        (encode_message(Hello(version=2)), "version 2"),
        (encode_message(Request(1, "echo")), "expected hello, got request"),
        (b"\x93\x01\x02\x03", "must be a msgpack map"),
    ],
    ids=["version", "not-hello", "not-a-map"],
)
async def test_bad_first_message_is_a_protocol_error(url: str, first: bytes, match: str) -> None:
    async with serving(url, standard_handler) as server:
        async with raw_client(server) as raw:
            with trio.fail_after(PROMPTLY):
                await raw.transport.send_bodies([first])
                answer = await raw.receive()
                assert isinstance(answer, Error)
                assert (answer.id, answer.code) == (None, "PROTOCOL_ERROR")
                assert match in answer.message
                assert await raw.receive() is None
        async with connected(server) as connection:
            assert await connection.request("echo", 2) == 2


async def test_client_refuses_a_welcome_of_another_version(url: str) -> None:
    async def future_peer(transport: Transport) -> None:
        await Raw(transport).welcome(Welcome(version=2))
        await trio.sleep_forever()

    async with serving(url, on_transport=future_peer) as server:
        with trio.fail_after(PROMPTLY), pytest.raises(ProtocolError, match="version 2"):
            async with connected(server):
                pass


async def test_no_hello_is_closed_after_the_handshake_timeout(url: str, autojump_clock: trio.testing.MockClock) -> None:
    config = ConnectionConfig(handshake_timeout=10.0)
    async with serving(url, standard_handler, config=config) as server, raw_client(server) as raw:
        start = trio.current_time()
        answer = await raw.receive()  # we say nothing
        assert isinstance(answer, Error)
        assert (answer.id, answer.code) == (None, "DEADLINE_EXCEEDED")
        assert "no hello within 10s" in answer.message
        assert await raw.receive() is None
        assert 10.0 <= trio.current_time() - start < 10.5
        assert server.connections == []


# -- limits ----------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["before-hello", "after-handshake"])
async def test_oversize_frame_is_rejected_and_the_server_keeps_serving(url: str, when: str) -> None:
    limit = 1024
    async with serving(
        url, standard_handler, config=ConnectionConfig(max_frame_size=limit), max_frame_size=limit
    ) as server:
        async with raw_client(server) as raw:
            with trio.fail_after(PROMPTLY):
                if when == "after-handshake":
                    welcome = await raw.hello()
                    assert welcome.max_frame_size == limit
                if isinstance(raw.transport, StreamTransport):
                    # only the header, announcing one byte too many: refused from it alone
                    await raw.transport.stream.send_all(struct.pack("<Q", limit + 1))
                    answer = await raw.receive_skipping_pings()
                    assert isinstance(answer, Error)
                    assert (answer.id, answer.code) == (None, "PROTOCOL_ERROR")
                    assert f"exceeds the maximum of {limit}" in answer.message
                else:
                    # websocket: the message is refused by its size (close code 1009)
                    await raw.transport.send_bodies([encode_message(Request(1, "echo", b"x" * limit))])
                assert await raw.receive_skipping_pings() is None
                if isinstance(raw.transport, WebsocketTransport):
                    assert raw.transport.ws.closed.code == 1009
        # another connection is served as before
        async with connected(server) as connection:
            with trio.fail_after(PROMPTLY):
                assert await connection.request("echo", b"y" * 100) == b"y" * 100


# -- transports ------------------------------------------------------------------------


async def test_connection_refused_is_unavailable(url: str) -> None:
    async with serving(url, standard_handler) as server:
        endpoint = server.endpoint
    assert endpoint is not None  # the server is gone now
    with pytest.raises(SpearError, match="cannot connect") as info:
        async with open_transport(endpoint):
            pytest.fail("connected to a closed endpoint")
    assert info.value.code is ErrorCode.UNAVAILABLE


async def test_transport_outlives_its_connect_timeout_and_passes_errors_through(
    url: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with serving(url, standard_handler) as server:
        assert server.endpoint is not None
        with pytest.raises(trio.TooSlowError):  # the caller's own timeout, not "cannot connect"
            async with open_transport(
                server.endpoint, connect_timeout=1.0, ssl_context=client_context_for(server.endpoint)
            ) as transport:
                await trio.sleep(5)  # longer than connect_timeout: the link must survive
                async with open_connection(transport, Hello()) as connection:
                    assert await connection.request("echo", 1) == 1
                with trio.fail_after(1):
                    await trio.sleep_forever()

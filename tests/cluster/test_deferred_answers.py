"""Deferred answers and relayed calls, the two protocol hooks a forwarding node
relays with (``IncomingRequest.defer``, ``Caller.relay``), on real connections:
one answer per request, the request in service until then, and its cancel,
deadline and connection loss giving the work behind it up."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from spear_actors.errors import ErrorCode, SpearError
from spear_actors.protocol.calls import IncomingRequest
from spear_actors.protocol.connection import ConnectionConfig
from spear_actors.protocol.messages import Cancel, Error, Message, Request, Response
from spear_actors.protocol.serving import Deferred

from ..protocol.peers import PROMPTLY, connected, raw_client, serving

URL = "tcp://127.0.0.1:0"
KIB = 1024
MIB = 1024 * KIB


class Holder:
    """A handler that defers ``hold`` requests (answered by the test) and answers
    ``echo`` at once; it records what gave each deferred request up."""

    def __init__(self) -> None:
        self.held: list[Deferred] = []
        self.params: list[Any] = []  # of each held request, in the order held
        self.given_up: list[str] = []
        self.changed = trio.Event()

    async def __call__(self, incoming: IncomingRequest) -> Any:
        if incoming.method == "echo":
            return incoming.params
        deferred = incoming.defer()
        if incoming.method == "answer-first":  # answered before the handler returns
            deferred.answer("early")
            return deferred
        deferred.on_give_up = self._gave_up
        self.held.append(deferred)
        self.params.append(incoming.params)
        self._changed()
        return deferred

    def _gave_up(self, reason: str) -> None:
        self.given_up.append(reason)
        self._changed()

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def until(self, held: int = 0, given_up: int = 0) -> None:
        while len(self.held) < held or len(self.given_up) < given_up:
            await self.changed.wait()


async def test_a_deferred_answer_comes_from_another_task_and_holds_the_request_in_service() -> None:
    holder = Holder()
    async with serving(URL, holder) as server, connected(server) as connection:
        with trio.fail_after(PROMPTLY):
            async with trio.open_nursery() as nursery:
                answers: list[Any] = []

                async def call() -> None:
                    answers.append(await connection.request("hold", 1))

                nursery.start_soon(call)
                await holder.until(held=1)
                assert server.connections[0].in_service == 1
                # the connection serves other requests meanwhile
                assert await connection.request("echo", "alive") == "alive"
                holder.held[0].answer({"late": True})
                holder.held[0].answer("twice")  # one answer per request: ignored
            assert answers == [{"late": True}]
            assert server.connections[0].in_service == 0
            assert await connection.request("answer-first") == "early"
            holder.held.clear()
            nursery_error: list[SpearError] = []
            async with trio.open_nursery() as nursery:

                async def failing() -> None:
                    try:
                        await connection.request("hold")
                    except SpearError as exc:
                        nursery_error.append(exc)

                nursery.start_soon(failing)
                await holder.until(held=1)
                holder.held[0].fail(SpearError(ErrorCode.NOT_FOUND, "no such thing"))
            assert [(e.code, e.message) for e in nursery_error] == [(ErrorCode.NOT_FOUND, "no such thing")]
            assert holder.given_up == []


async def test_a_deferred_answer_keeps_its_handler_slot() -> None:
    holder = Holder()
    config = ConnectionConfig(max_inflight_handlers=1)
    async with serving(URL, holder, config=config) as server, connected(server) as connection:
        with trio.fail_after(PROMPTLY):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(connection.request, "hold")
                await holder.until(held=1)
                echoed: list[Any] = []

                async def echo() -> None:
                    echoed.append(await connection.request("echo", 2))

                nursery.start_soon(echo)
                while server.connections[0].in_service < 2:
                    await trio.sleep(0.001)
                await trio.sleep(0.05)
                assert echoed == []  # waits for the slot the held request has
                holder.held[0].answer(None)
            assert echoed == [2]


async def test_the_callers_cancel_gives_a_deferred_answer_up() -> None:
    holder = Holder()
    async with serving(URL, holder) as server, connected(server) as connection:
        with trio.fail_after(PROMPTLY):
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(connection.request, "hold")
                    await holder.until(held=1)
                    scope.cancel()
            await holder.until(given_up=1)
            assert holder.given_up == ["peer cancelled: caller cancelled"]
            holder.held[0].answer("too late")  # ignored: it was answered CANCELLED
            assert server.connections[0].in_service == 0
            assert await connection.request("echo", "alive") == "alive"


async def test_the_deadline_of_a_deferred_request_is_enforced_by_the_serving_side() -> None:
    holder = Holder()
    async with serving(URL, holder) as server, connected(server) as connection:
        with trio.fail_after(PROMPTLY):
            answers: list[tuple[Any, SpearError | None]] = []
            done = trio.Event()

            def on_answer(result: Any, error: SpearError | None) -> None:
                answers.append((result, error))
                done.set()

            # a relayed call does not time out itself: the deadline travels, and the
            # serving side's timer answers (the later deadline first: the timer reorders)
            await connection.relay("hold", None, on_answer, timeout=30)
            await connection.relay("hold", None, on_answer, timeout=0.1)
            await done.wait()
            ((result, error),) = answers
            assert result is None and error is not None
            assert error.code is ErrorCode.DEADLINE_EXCEEDED and "deadline of 100 ms" in error.message
            assert holder.given_up == ["deadline exceeded"]
            assert server.connections[0].in_service == 1  # the 30 s one is still held
            holder.held[0].answer("in time")
            while len(answers) < 2:
                await trio.sleep(0.001)
            assert answers[1] == ("in time", None)
            assert connection.in_flight == 0


async def test_connection_loss_gives_deferred_answers_up_and_fails_relayed_calls() -> None:
    holder = Holder()
    async with serving(URL, holder) as server:
        async with connected(server) as connection:
            with trio.fail_after(PROMPTLY):
                answers: list[tuple[Any, SpearError | None]] = []
                await connection.relay("hold", None, lambda r, e: answers.append((r, e)))
                await connection.relay("hold", None, lambda r, e: answers.append((r, e)), timeout=10)
                await holder.until(held=2)
                await connection.aclose("leaving")
                # the caller's side: every relayed call answered UNAVAILABLE, once
                assert [e.code if e else None for _, e in answers] == [ErrorCode.UNAVAILABLE] * 2
                # the serving side: both given up, out of service
                await holder.until(given_up=2)
                assert holder.given_up == ["the connection ended"] * 2
        assert server.connections[0].in_service == 0


async def test_a_relayed_call_given_up_sends_a_cancel_and_its_answer_is_dropped() -> None:
    holder = Holder()
    async with serving(URL, holder) as server, connected(server) as connection:
        with trio.fail_after(PROMPTLY):
            answers: list[Any] = []
            call = await connection.relay("hold", None, lambda r, e: answers.append((r, e)))
            await holder.until(held=1)
            call.give_up("client left")
            call.give_up("again")  # once
            await holder.until(given_up=1)
            assert holder.given_up == ["peer cancelled: client left"]
            assert connection.in_flight == 0
            assert await connection.request("echo", "alive") == "alive"
            assert answers == []


async def test_a_stream_request_cannot_be_deferred() -> None:
    async def handler(incoming: IncomingRequest) -> Any:
        return incoming.defer()

    async with serving(URL, handler) as server, connected(server) as connection:
        with trio.fail_after(PROMPTLY), pytest.raises(SpearError) as refused:
            async with connection.stream("anything") as items:
                async for _ in items:
                    pass
        assert refused.value.code is ErrorCode.FAILED_PRECONDITION


_FATES = st.sampled_from(["answer", "fail", "cancel", "deadline", "answer-then-cancel", "cancel-then-answer", "left"])


@settings(max_examples=30, deadline=None)
@given(fates=st.lists(_FATES, min_size=1, max_size=6), order=st.randoms(use_true_random=False), abort=st.booleans())
async def test_every_held_request_gets_exactly_one_answer_whatever_happens_to_it(
    fates: list[str], order: Any, abort: bool
) -> None:
    """Held requests answered, failed, cancelled (before or after their answer), past
    their deadline, or left when the peer goes away (*abort*; else they are answered
    last): on the wire, exactly one terminal answer each, the one its fate says."""
    holder = Holder()
    async with serving(URL, holder) as server, raw_client(server) as raw:
        with trio.fail_after(PROMPTLY):
            await raw.hello()
            ids = list(range(1, len(fates) + 1))
            await raw.send(
                *(
                    Request(i, "hold", i, 30 if fate == "deadline" else 60_000)
                    for i, fate in zip(ids, fates, strict=True)
                )
            )
            await holder.until(held=len(ids))
            by_id = dict(zip(holder.params, holder.held, strict=True))  # served in any order
            actions = [i for i, fate in zip(ids, fates, strict=True) if fate not in ("deadline", "left")]
            order.shuffle(actions)
            for i in actions:
                fate = fates[i - 1]
                if fate in ("answer", "answer-then-cancel"):
                    by_id[i].answer(i)
                elif fate == "fail":
                    by_id[i].fail(SpearError(ErrorCode.NOT_FOUND, f"no {i}"))
                if fate in ("cancel", "answer-then-cancel", "cancel-then-answer"):
                    await raw.send(Cancel(i, f"stop {i}"))
            if abort:
                await raw.send(Request(len(ids) + 1, "echo", "barrier"))
            else:
                for i in ids:
                    if fates[i - 1] == "left":
                        by_id[i].answer(i)
            expected = sum(1 for f in fates if f != "left" or not abort) + int(abort)
            answers: dict[int, list[Message]] = {}
            received = 0
            while received < expected:
                message = await raw.receive_skipping_pings()
                assert isinstance(message, (Response, Error)) and message.id is not None, message
                answers.setdefault(message.id, []).append(message)
                received += 1
                if message.id <= len(fates) and fates[message.id - 1] == "cancel-then-answer":
                    by_id[message.id].answer("late")  # ignored: it was answered CANCELLED
            assert all(len(got) == 1 for got in answers.values()), answers
            for i, fate in zip(ids, fates, strict=True):
                if fate == "left" and abort:
                    assert i not in answers
                    continue
                (got,) = answers[i]
                if fate in ("answer", "answer-then-cancel", "left"):
                    assert isinstance(got, Response) and got.result == i
                else:
                    assert isinstance(got, Error)
                    want = {"fail": "NOT_FOUND", "cancel": "CANCELLED", "cancel-then-answer": "CANCELLED"}
                    assert got.code == want.get(fate, "DEADLINE_EXCEEDED")
            if abort:
                await raw.abort()
                await server.connections[0].wait_closed()
                assert holder.given_up.count("the connection ended") == fates.count("left")
            assert server.connections[0].in_service == 0


async def test_the_bytes_of_held_requests_count_against_the_connections_budget() -> None:
    """Issue 12's budget holds for deferred answers: held requests' bytes stop the
    reader until they are answered."""
    holder = Holder()
    config = ConnectionConfig(max_bytes_in_service=1 * MIB)
    async with serving(URL, holder, config=config) as server, raw_client(server) as raw:
        await raw.hello()
        async with trio.open_nursery() as nursery:
            # 8 held requests of 512 KiB: the node reads until it holds more than 1 MiB
            nursery.start_soon(raw.send, *(Request(i, "hold", b"r" * (512 * KIB)) for i in range(1, 9)))
            with trio.fail_after(PROMPTLY):
                await holder.until(held=2)
            await trio.testing.wait_all_tasks_blocked(cushion=0.1)
            assert server.connections[0].in_service == 2  # over the budget: reading stopped
            assert server.connections[0].bytes_in_service > 1 * MIB
            with trio.fail_after(PROMPTLY):
                answered = 0
                while answered < 8:  # answering frees the budget: the rest is read
                    await holder.until(held=answered + 1)
                    holder.held[answered].answer(answered)
                    answered += 1
                answers = [await raw.receive_skipping_pings() for _ in range(8)]
        assert sorted(a.id for a in answers if isinstance(a, Response)) == list(range(1, 9))
        assert server.connections[0].in_service == 0

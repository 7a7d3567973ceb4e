"""RelayedCall.cancel, on real connections: a relayed call is cancelled as a
cancelled ``request`` is — the peer's confirming answer goes to the callback, and
a peer that does not confirm within the cancel grace is reported."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from spear_actors.errors import ErrorCode, SpearError
from spear_actors.protocol.calls import IncomingRequest

from .peers import PROMPTLY, connected, serving

URL = "tcp://127.0.0.1:0"


class Peer:
    """``hold`` waits until cancelled; ``deaf`` ignores its cancel until released."""

    def __init__(self) -> None:
        self.started = 0
        self.release = trio.Event()

    async def __call__(self, incoming: IncomingRequest) -> Any:
        self.started += 1
        if incoming.method == "deaf":
            with trio.CancelScope(shield=True):
                await self.release.wait()
            return "late"
        await trio.sleep_forever()


async def test_a_cancel_confirmed_by_the_peer_reaches_the_callback() -> None:
    peer = Peer()
    async with serving(URL, peer) as server, connected(server) as connection:
        with trio.fail_after(PROMPTLY):
            answers: list[tuple[Any, SpearError | None]] = []
            call = await connection.relay("hold", None, lambda r, e: answers.append((r, e)), cancel_grace=60)
            while peer.started == 0:
                await trio.sleep(0.001)
            await call.cancel("caller left")  # returns once the peer has confirmed
            [(result, error)] = answers
            assert result is None and error is not None and error.code is ErrorCode.CANCELLED
            assert call.done and connection.in_flight == 0
            await call.cancel("again")  # over: nothing more
            assert len(answers) == 1


async def test_a_peer_that_does_not_confirm_in_the_grace_is_reported(mock_clock: trio.testing.MockClock) -> None:
    peer = Peer()
    unconfirmed: list[tuple[str, int]] = []
    async with serving(URL, peer) as server, connected(server) as connection:
        connection.on_unconfirmed_cancel = lambda method, request_id: unconfirmed.append((method, request_id))
        answers: list[tuple[Any, SpearError | None]] = []
        call = await connection.relay("deaf", None, lambda r, e: answers.append((r, e)), cancel_grace=2.0)
        while peer.started == 0:
            await trio.testing.wait_all_tasks_blocked(0.01)
            await trio.sleep(0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call.cancel, "caller left")
            await trio.testing.wait_all_tasks_blocked(0.05)
            assert unconfirmed == []  # still within the grace
            mock_clock.jump(2.0)
        assert unconfirmed == [("deaf", call.id)]
        assert call.done and connection.in_flight == 0
        peer.release.set()  # its late answer is dropped
        await trio.testing.wait_all_tasks_blocked(0.05)
        assert answers == []


def dies_while_cancelling(connection: Any) -> None:
    """Make the connection's next cancel find the link dead (as a write that fails
    with EPIPE does): every call still in flight is failed first."""
    original = connection._give_up

    def give_up(request_id: int, ticket: int, reason: str) -> bool:
        connection._die(SpearError(ErrorCode.UNAVAILABLE, "link lost while sending the cancel"))
        result: bool = original(request_id, ticket, reason)
        return result

    connection._give_up = give_up


async def test_giving_up_a_call_whose_cancel_finds_the_link_dead_answers_nothing() -> None:
    # found by killing agents under load: give_up's own cancel made the link fail
    # the call, and give_up then removed it a second time (KeyError)
    peer = Peer()
    async with serving(URL, peer) as server, connected(server) as connection:
        with trio.fail_after(PROMPTLY):
            answers: list[tuple[Any, SpearError | None]] = []
            call = await connection.relay("hold", None, lambda r, e: answers.append((r, e)), cancel_grace=60)
            other = await connection.relay("hold", None, lambda r, e: answers.append((r, e)))
            while peer.started < 2:
                await trio.sleep(0.001)
            dies_while_cancelling(connection)
            call.give_up("instance stopped")
            assert call.done and connection.closed
            [(result, error)] = answers  # only the other call: this one was given up
            assert result is None and error is not None and error.code is ErrorCode.UNAVAILABLE
            assert other.done and connection.in_flight == 0
        peer.release.set()


async def test_cancelling_a_call_whose_cancel_finds_the_link_dead_answers_it_once() -> None:
    peer = Peer()
    async with serving(URL, peer) as server, connected(server) as connection:
        with trio.fail_after(PROMPTLY):
            answers: list[tuple[Any, SpearError | None]] = []
            call = await connection.relay("hold", None, lambda r, e: answers.append((r, e)), cancel_grace=60)
            while peer.started < 1:
                await trio.sleep(0.001)
            dies_while_cancelling(connection)
            await call.cancel("caller left")  # returns at once: no grace to wait out
            [(result, error)] = answers
            assert result is None and error is not None and error.code is ErrorCode.UNAVAILABLE
            assert call.done and connection.in_flight == 0
        peer.release.set()

"""Actor primitives: tell/ask, bounded inboxes, and no hang when an actor dies."""

from __future__ import annotations

import dataclasses

import pytest
import trio

from spear_actors.actors.mailbox import Actor, Reply
from spear_actors.errors import ErrorCode, SpearError


@dataclasses.dataclass
class Add:
    n: int
    reply: Reply[int]


@dataclasses.dataclass
class Slow:
    seconds: float
    reply: Reply[str]


@dataclasses.dataclass
class Crash:
    pass


class Counter(Actor[Add | Slow | Crash]):
    inbox_size = 2

    def __init__(self) -> None:
        super().__init__("counter")
        self.total = 0

    def handle(self, message: Add | Slow | Crash) -> None:
        if isinstance(message, Add):
            self.total += message.n
            message.reply.send(self.total)
        elif isinstance(message, Slow):
            self.nursery.start_soon(self._slow, message)
        else:
            raise RuntimeError("crash requested")

    async def _slow(self, message: Slow) -> None:
        await trio.sleep(message.seconds)
        message.reply.send("done")


async def test_ask_returns_the_reply() -> None:
    async with trio.open_nursery() as nursery:
        ref = await nursery.start(Counter().run)
        assert await ref.ask(lambda r: Add(2, r)) == 2
        assert await ref.ask(lambda r: Add(3, r)) == 5
        nursery.cancel_scope.cancel()


async def test_slow_work_does_not_block_the_inbox(autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        ref = await nursery.start(Counter().run)
        slow: Reply[str] = Reply()
        await ref.tell(Slow(10, slow))
        start = trio.current_time()
        assert await ref.ask(lambda r: Add(1, r)) == 1
        assert trio.current_time() == start  # answered while the slow work runs
        assert await slow.wait() == "done"
        assert trio.current_time() == start + 10
        nursery.cancel_scope.cancel()


async def test_full_inbox_is_resource_exhausted_for_tell_nowait() -> None:
    actor = Counter()  # not running: nothing drains the inbox
    actor.ref.tell_nowait(Add(1, Reply()))
    actor.ref.tell_nowait(Add(1, Reply()))
    with pytest.raises(SpearError) as info:
        actor.ref.tell_nowait(Add(1, Reply()))
    assert info.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert info.value.details["retry_after_ms"] > 0


async def test_messages_left_in_the_inbox_of_a_stopped_actor_are_answered(autojump_clock: trio.abc.Clock) -> None:
    actor = Counter()
    waiting: Reply[int] = Reply()
    actor.ref.tell_nowait(Add(1, waiting))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.run)
        actor.stop()
        nursery.cancel_scope.cancel()
    # Either it was handled before the stop, or it is answered UNAVAILABLE: never a hang.
    with trio.fail_after(1):
        try:
            await waiting.wait()
        except SpearError as exc:
            assert exc.code is ErrorCode.UNAVAILABLE


async def test_tell_to_a_stopped_actor_is_unavailable() -> None:
    actor = Counter()
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        actor.stop()
    with pytest.raises(SpearError) as info:
        await actor.ref.ask(lambda r: Add(1, r))
    assert info.value.code is ErrorCode.UNAVAILABLE


async def test_reply_takes_only_the_first_answer() -> None:
    reply: Reply[int] = Reply()
    reply.send(1)
    reply.fail(SpearError(ErrorCode.INTERNAL, "late"))
    reply.send(2)
    assert await reply.wait() == 1

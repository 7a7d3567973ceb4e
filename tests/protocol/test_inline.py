"""run_inline: a coroutine's first step runs in place; trio sees the rest as an await."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from spear_actors.protocol.inline import run_inline


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


async def test_a_coroutine_that_never_waits_runs_without_the_callback() -> None:
    async def answer() -> int:
        return 42

    before = Counter()
    assert await run_inline(answer(), before) == 42
    assert before.calls == 0


async def test_the_callback_runs_once_just_before_the_first_wait() -> None:
    order: list[str] = []

    async def waits_twice() -> str:
        order.append("first step")
        await trio.lowlevel.checkpoint()
        order.append("second step")
        await trio.sleep(0)
        return "done"

    assert await run_inline(waits_twice(), lambda: order.append("callback")) == "done"
    assert order == ["first step", "callback", "second step"]


@pytest.mark.parametrize("waits_first", [False, True])
async def test_exceptions_propagate_unchanged(waits_first: bool) -> None:
    async def fails() -> None:
        if waits_first:
            await trio.lowlevel.checkpoint()
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await run_inline(fails(), Counter())


async def test_cancellation_reaches_the_coroutine_and_its_cleanup_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cleaned_up = trio.Event()

    async def sleeps() -> None:
        try:
            await trio.sleep_forever()
        finally:
            cleaned_up.set()

    with trio.move_on_after(1) as scope:
        await run_inline(sleeps(), Counter())
    assert scope.cancelled_caught
    assert cleaned_up.is_set()


async def test_values_sent_by_trio_reach_the_coroutine(autojump_clock: trio.testing.MockClock) -> None:
    # a memory channel hands the value over through trio's reschedule: it must arrive
    send, receive = trio.open_memory_channel[Any](0)

    async def receives() -> Any:
        return await receive.receive()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send.send, {"value": 7})
        assert await run_inline(receives(), Counter()) == {"value": 7}


async def test_a_non_coroutine_awaitable_is_awaited_after_the_callback() -> None:
    class Ready:
        def __await__(self) -> Any:
            return (yield from trio.lowlevel.checkpoint().__await__()) or "ready"

    before = Counter()
    assert await run_inline(Ready(), before) == "ready"
    assert before.calls == 1

"""DeadlineQueue: each live entry expires at its deadline (not before, not twice),
ended ones never do, and the heap stays proportional to the live entries."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from spear_actors.deadlines import DeadlineQueue


class Entry:
    def __init__(self, name: int, deadline: float) -> None:
        self.name = name
        self.deadline = deadline
        self.over = False


# (deadline offset, end it after this many seconds or never) for each entry, added
# one after another with a gap
entries = st.lists(
    st.tuples(st.floats(0.0, 10.0), st.one_of(st.none(), st.floats(0.0, 10.0)), st.floats(0.0, 1.0)),
    max_size=60,
)


@settings(max_examples=80, deadline=None)
@given(plan=entries)
def test_each_live_entry_expires_once_at_its_deadline(plan: list[tuple[float, float | None, float]]) -> None:
    expired: list[tuple[int, float]] = []
    ended_at: dict[int, float] = {}
    added: list[Entry] = []
    biggest_heap = 0

    async def main() -> None:
        nonlocal biggest_heap
        queue: DeadlineQueue[Entry] = DeadlineQueue(lambda e: expire(e), lambda e: not e.over)

        def expire(entry: Entry) -> None:
            assert not entry.over
            entry.over = True
            expired.append((entry.name, trio.current_time()))
            queue.ended()

        async def end_later(entry: Entry, after: float) -> None:
            await trio.sleep(after)
            if not entry.over:
                entry.over = True
                ended_at[entry.name] = trio.current_time()
                queue.ended()

        async with trio.open_nursery() as nursery:
            for name, (offset, end_after, gap) in enumerate(plan):
                entry = Entry(name, trio.current_time() + offset)
                added.append(entry)
                queue.add(entry.deadline, entry, nursery)
                if end_after is not None:
                    nursery.start_soon(end_later, entry, end_after)
                await trio.sleep(gap)
                biggest_heap = max(biggest_heap, len(queue._heap))
            await trio.sleep(30)
            assert len(queue) == 0
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    by_name = dict(expired)
    assert len(by_name) == len(expired)  # none twice
    for entry in added:
        if entry.name in by_name:
            assert by_name[entry.name] == pytest.approx(entry.deadline, abs=1e-9)  # at it, not before or after
            assert entry.name not in ended_at
        else:  # ended before its deadline
            assert ended_at[entry.name] <= entry.deadline + 1e-9
    assert len(expired) + len(ended_at) == len(added)


async def test_ended_entries_do_not_pile_up_in_the_heap(autojump_clock: trio.abc.Clock) -> None:
    expired: list[Entry] = []
    queue: DeadlineQueue[Entry] = DeadlineQueue(expired.append, lambda e: not e.over)
    async with trio.open_nursery() as nursery:
        for name in range(100_000):  # answered at once, with an hour to go: as calls are
            entry = Entry(name, trio.current_time() + 3600)
            queue.add(entry.deadline, entry, nursery)
            entry.over = True
            queue.ended()
            assert len(queue._heap) <= 64 + 1
        assert len(queue) == 0
        nursery.cancel_scope.cancel()
    assert expired == []

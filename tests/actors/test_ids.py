"""Execution ids: 32 hex digits (a millisecond timestamp, then 80 random bits), never
repeated across refills, in creation order."""

from __future__ import annotations

import re
import time

import pytest

from spear_actors.actors.ids import RandomIds


def test_ids_are_32_hex_digits_and_distinct_across_batches() -> None:
    ids = RandomIds("exec-")
    made = [ids.new() for _ in range(2000)]  # several refills
    assert all(re.fullmatch(r"exec-[0-9a-f]{32}", made_id) for made_id in made)
    assert len(set(made)) == len(made)
    # two owners (two nodes, or one node restarted) share nothing
    assert not set(made) & {RandomIds("exec-").new() for _ in range(2000)}


def test_ids_start_with_their_creation_time_and_sort_by_it(monkeypatch: pytest.MonkeyPatch) -> None:
    ids = RandomIds("exec-")
    clock = iter([1_700_000_000.0011, 1_700_000_000.0029, 1_700_000_123.4567])
    monkeypatch.setattr(time, "time", lambda: next(clock))
    made = [ids.new() for _ in range(3)]
    assert [int(made_id[5:17], 16) for made_id in made] == [1_700_000_000_001, 1_700_000_000_002, 1_700_000_123_456]
    assert made == sorted(made)  # string order is creation order across milliseconds


def test_the_random_part_is_random() -> None:
    ids = RandomIds("exec-")
    tails = [ids.new()[17:] for _ in range(4000)]
    assert len(set(tails)) == len(tails)
    # every hex digit appears in every position of the random part, about evenly
    for position in range(20):
        counts = {digit: 0 for digit in "0123456789abcdef"}
        for tail in tails:
            counts[tail[position]] += 1
        assert min(counts.values()) > 4000 / 16 / 2

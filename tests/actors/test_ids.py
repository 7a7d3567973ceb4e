"""Execution ids: random, 32 hex digits, never repeated across refills."""

from __future__ import annotations

import re

from spear_actors.actors.ids import RandomIds


def test_ids_are_32_random_hex_digits_and_distinct_across_batches() -> None:
    ids = RandomIds("exec-")
    made = [ids.new() for _ in range(2000)]  # several 4 KiB refills
    assert all(re.fullmatch(r"exec-[0-9a-f]{32}", made_id) for made_id in made)
    assert len(set(made)) == len(made)
    # two owners (two nodes, or one node restarted) share nothing
    assert not set(made) & {RandomIds("exec-").new() for _ in range(2000)}

"""tune_gc: what `spear serve` does to the collector once its node is up."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from spear_actors import tune_gc
from spear_actors.gctune import YOUNG_THRESHOLD


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_it_freezes_start_up_and_raises_the_young_threshold(restored_gc: None) -> None:
    gc.set_threshold(700, 10, 10)
    tune_gc()
    assert gc.get_freeze_count() > 1000  # this process's modules, at least
    assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, 10)


def test_it_never_lowers_a_higher_threshold(restored_gc: None) -> None:
    gc.set_threshold(50_000, 20, 30)
    tune_gc()
    assert gc.get_threshold() == (50_000, 20, 30)

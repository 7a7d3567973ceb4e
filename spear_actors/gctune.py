"""Garbage-collector settings for a process whose main job is serving a node.

A call leaves no reference cycle (its callbacks are dropped once called), so what a
call allocates is freed by reference counting. What still costs is CPython's
cyclic collector walking the objects that *live*: with the default young-generation
threshold (700) it runs every few dozen calls under load, and each pass that reaches
the old generation walks every retained execution record — about 12 µs per call at
64 calls in flight, an eighth of the node's CPU (docs/performance.md). Settings are
process-wide, so the library never changes them by itself: ``spear serve`` calls
:func:`tune_gc` once its node is up; a program that embeds a node may call it too.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "tune_gc"]

YOUNG_THRESHOLD = 10_000
"""Net allocations of tracked objects between young-generation collections (the
default is 700). Cycles made elsewhere (an exception kept with its traceback) wait
a little longer to be collected: at most this many objects more."""


def tune_gc() -> None:
    """Freeze what exists now (start-up's modules, classes, the node's actors: never
    scanned again) and collect the young generation less often. Call it once the node
    is up; it only raises the threshold, never lowers one set higher."""
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_THRESHOLD), middle, old)

"""Metrics recorded where things happen (runtimes, the artifact store, the gateway)
without those parts knowing the node: :func:`recording` puts the node's
:class:`RuntimeEvents` in a context variable for everything the node starts, and
:func:`events` finds it (None when the node counts nothing: no ``metrics_listen``,
or code running outside a node).

None of these events is on a call's hot path except the WASM trap (only on a
failed call); each costs a context-variable read and a counter update.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["RuntimeEvents", "events", "recording"]

_START_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_MAX_REMEMBERED_FAILURES: Final = 10_000
"""Tasks whose last instance failure is remembered (to count the next start as a restart)."""


class RuntimeEvents:
    """The counters that runtimes, the artifact store and the gateway update."""

    def __init__(self) -> None:
        r = None  # registered with the node's registry once it exists (register())
        self.cold_starts = Counter(
            "spear_cold_starts", "Instances started (spawned or instantiated until ready), by runtime.",
            ["runtime"], registry=r,
        )  # fmt: skip
        self.cold_start_seconds = Histogram(
            "spear_cold_start_duration_seconds", "Time from an instance's start until it is ready, by runtime.",
            ["runtime"], buckets=_START_BUCKETS, registry=r,
        )  # fmt: skip
        self.instance_failures = Counter(
            "spear_instance_failures", "Instances that failed (to start, or while live), by runtime and reason.",
            ["runtime", "reason"], registry=r,
        )  # fmt: skip
        self.instance_restarts = Counter(
            "spear_instance_restarts", "Instances started for a task whose previous instance failed, by that reason.",
            ["runtime", "reason"], registry=r,
        )  # fmt: skip
        self.artifact_fetches = Counter(
            "spear_artifact_fetches", "Artifacts fetched or copied into the cache, by source and outcome code.",
            ["source", "outcome"], registry=r,
        )  # fmt: skip
        self.artifact_cache_hits = Counter(
            "spear_artifact_cache_hits",
            "Artifacts found (and verified) in the cache, by source.",
            ["source"],
            registry=r,
        )
        self.wasm_traps = Counter(
            "spear_wasm_traps", "WASM executions stopped by a trap or a limit, by kind.", ["kind"], registry=r
        )
        self._failed: dict[tuple[str, str], str] = {}
        self._traps: dict[str, Any] = {}  # label children by kind (labels() is the slow part)

    def register(self, registry: CollectorRegistry) -> None:
        """Expose these counters through *registry* (the node's)."""
        for metric in (
            self.cold_starts, self.cold_start_seconds, self.instance_failures, self.instance_restarts,
            self.artifact_fetches, self.artifact_cache_hits, self.wasm_traps,
        ):  # fmt: skip
            registry.register(metric)

    def instance_started(self, runtime: str, task_id: str, seconds: float) -> None:
        """An instance of *task_id* became ready after *seconds*; a restart if the
        task's previous instance failed."""
        self.cold_starts.labels(runtime).inc()
        self.cold_start_seconds.labels(runtime).observe(seconds)
        reason = self._failed.pop((runtime, task_id), None)
        if reason is not None:
            self.instance_restarts.labels(runtime, reason).inc()

    def wasm_trapped(self, kind: str) -> None:
        """A WASM execution ended with a trap or limit of *kind* (a fixed word)."""
        child = self._traps.get(kind)
        if child is None:
            child = self._traps[kind] = self.wasm_traps.labels(kind)
        child.inc()

    def instance_failed(self, runtime: str, task_id: str, reason: str) -> None:
        """An instance of *task_id* failed; *reason* is one of a few fixed words."""
        self.instance_failures.labels(runtime, reason).inc()
        if len(self._failed) < _MAX_REMEMBERED_FAILURES:
            self._failed[(runtime, task_id)] = reason


_current: contextvars.ContextVar[RuntimeEvents | None] = contextvars.ContextVar("spear_runtime_events", default=None)


def events() -> RuntimeEvents | None:
    """The events of the node this code runs for, or None (nothing is counted)."""
    return _current.get()


@contextmanager
def recording(runtime_events: RuntimeEvents | None) -> Iterator[None]:
    """Within the block, and in every task and thread started from it,
    :func:`events` is *runtime_events*."""
    token = _current.set(runtime_events)
    try:
        yield
    finally:
        try:
            _current.reset(token)
        except ValueError:
            pass  # ended from another context (a generator closed elsewhere): nothing to undo here

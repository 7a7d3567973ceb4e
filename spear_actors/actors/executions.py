"""The execution registry: one record per execution, owned by the manager actor.

Plain data structures, no trio tasks: the manager calls it from its handler.
Finished records are kept up to ``max_records`` and ``max_age_s`` (oldest evicted
first); unfinished ones are never evicted (admission control bounds them).
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Iterator
from typing import Any

from ..errors import ErrorCode, SpearError
from ..model import ExecutionMode, ExecutionStatus
from .mailbox import Reply
from .messages import Outcome

__all__ = ["ExecutionRecord", "ExecutionRegistry", "LatencyWindow", "status_for"]


def status_for(error: SpearError) -> ExecutionStatus:
    """The terminal status an execution ends in when it fails with *error*."""
    if error.code is ErrorCode.DEADLINE_EXCEEDED:
        return ExecutionStatus.TIMEOUT
    if error.code is ErrorCode.CANCELLED:
        return ExecutionStatus.CANCELLED
    return ExecutionStatus.FAILED


class ExecutionRecord:
    """spear's ExecutionRecord. Slots keep one record small (see docs/performance.md)."""

    __slots__ = (
        "completed_at",
        "created_at",
        "error",
        "execution_id",
        "execution_time_ms",
        "function_name",
        "instance_id",
        "logs",
        "mode",
        "result",
        "seq",
        "started_at",
        "status",
        "task_id",
        "watchers",
    )

    def __init__(self, seq: int, execution_id: str, task_id: str, function_name: str, mode: ExecutionMode) -> None:
        self.seq = seq
        self.execution_id = execution_id
        self.task_id = task_id
        self.function_name = function_name
        self.mode = mode
        self.status = ExecutionStatus.PENDING
        self.instance_id = ""
        self.result: Any = None
        self.error: SpearError | None = None
        self.created_at = time.time()
        self.started_at: float | None = None
        self.completed_at: float | None = None
        self.execution_time_ms: float | None = None
        self.logs: list[str] | None = None
        self.watchers: list[Reply[Outcome]] | None = None
        """Replies to answer when the execution ends (duplicate submits, waiters)."""

    @property
    def finished(self) -> bool:
        """True once the status is terminal."""
        return self.status.terminal

    def outcome(self) -> Outcome:
        """The finished execution as an :class:`Outcome` (raises its error if it failed)."""
        if self.error is not None:
            raise SpearError(self.error.code, self.error.message, dict(self.error.details))
        return Outcome(self.result, self.instance_id, self.execution_time_ms or 0.0, list(self.logs or []))

    def to_dict(self, include_result: bool = True, include_logs: bool = False) -> dict[str, Any]:
        """The record as a map (the shape of get_execution's answer)."""
        out: dict[str, Any] = {
            "execution_id": self.execution_id,
            "task_id": self.task_id,
            "instance_id": self.instance_id,
            "function_name": self.function_name,
            "mode": self.mode.value,
            "status": self.status.value,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "execution_time_ms": self.execution_time_ms,
            "error": self.error.to_dict() if self.error else None,
        }
        if include_result:
            out["result"] = self.result
        if include_logs:
            out["logs"] = list(self.logs or [])
        return out


class LatencyWindow:
    """The most recent execution times of a task, for estimates and percentiles.

    The sorted view is cached and refreshed after every ``resort_every`` new samples,
    so asking for an estimate on each ASYNC call costs no sort of the whole window.
    """

    __slots__ = ("_fresh", "_sorted", "resort_every", "samples")

    def __init__(self, size: int = 1024, resort_every: int = 32) -> None:
        self.samples: collections.deque[float] = collections.deque(maxlen=size)
        self.resort_every = resort_every
        self._sorted: list[float] = []
        self._fresh = 0

    def add(self, ms: float) -> None:
        self.samples.append(ms)
        self._fresh += 1

    def percentile(self, fraction: float) -> float | None:
        """The *fraction* quantile of the window (None when empty)."""
        if not self.samples:
            return None
        if self._fresh >= self.resort_every or not self._sorted or len(self._sorted) < self.resort_every:
            self._sorted = sorted(self.samples)
            self._fresh = 0
        ordered = self._sorted
        return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


class ExecutionRegistry:
    """Records by id, in creation order, with bounded retention of finished ones."""

    def __init__(self, max_records: int = 10_000, max_age_s: float = 3600.0) -> None:
        self.max_records = max_records
        self.max_age_s = max_age_s
        self._records: dict[str, ExecutionRecord] = {}
        self._finished: collections.deque[ExecutionRecord] = collections.deque()
        self._seq = itertools.count()
        self.counts: collections.Counter[ExecutionStatus] = collections.Counter()
        """How many executions are in each status now (live) or ended in it (terminal)."""

    def __len__(self) -> int:
        return len(self._records)

    def get(self, execution_id: str) -> ExecutionRecord | None:
        """The record, if it exists and has not been evicted."""
        return self._records.get(execution_id)

    def require(self, execution_id: str) -> ExecutionRecord:
        """The record, or NOT_FOUND."""
        record = self._records.get(execution_id)
        if record is None:
            raise SpearError(ErrorCode.NOT_FOUND, f"execution {execution_id!r} not found (or evicted)")
        return record

    def create(self, execution_id: str, task_id: str, function_name: str, mode: ExecutionMode) -> ExecutionRecord:
        """Register a new PENDING execution."""
        record = ExecutionRecord(next(self._seq), execution_id, task_id, function_name, mode)
        self._records[execution_id] = record
        self.counts[ExecutionStatus.PENDING] += 1
        return record

    def started(self, record: ExecutionRecord, instance_id: str) -> None:
        """PENDING → RUNNING on *instance_id*."""
        if record.status is ExecutionStatus.PENDING:
            self._move(record, ExecutionStatus.RUNNING)
            record.instance_id = instance_id
            record.started_at = time.time()

    def finish(self, record: ExecutionRecord, outcome: Outcome | None, error: SpearError | None) -> bool:
        """Record the end (first one wins); answer the watchers. Returns False if it
        had already finished."""
        if record.finished:
            return False
        record.completed_at = time.time()
        if outcome is not None:
            record.result = outcome.result
            record.logs = outcome.logs or None
            record.instance_id = outcome.instance_id or record.instance_id
            record.execution_time_ms = outcome.execution_time_ms
            self._move(record, ExecutionStatus.COMPLETED)
        else:
            assert error is not None
            record.error = error
            logs = error.details.get("logs")
            record.logs = list(logs) if isinstance(logs, list) else None
            if record.started_at is not None:
                record.execution_time_ms = round((record.completed_at - record.started_at) * 1000, 3)
            self._move(record, status_for(error))
        watchers, record.watchers = record.watchers, None
        for watcher in watchers or ():
            try:
                watcher.send(record.outcome())
            except SpearError as exc:
                watcher.fail(exc)
        self._finished.append(record)
        self.evict()
        return True

    def watch(self, record: ExecutionRecord, reply: Reply[Outcome]) -> None:
        """Answer *reply* when *record* finishes (at once if it has)."""
        if record.finished:
            try:
                reply.send(record.outcome())
            except SpearError as exc:
                reply.fail(exc)
        else:
            record.watchers = [*(record.watchers or ()), reply]

    def evict(self, now: float | None = None) -> None:
        """Drop finished records past the count or age limit, oldest first."""
        now = time.time() if now is None else now
        finished = self._finished
        while finished and (len(finished) > self.max_records or now - (finished[0].completed_at or 0) > self.max_age_s):
            old = finished.popleft()
            self._records.pop(old.execution_id, None)

    def page(
        self,
        *,
        task_id: str = "",
        statuses: set[ExecutionStatus] | None = None,
        limit: int = 100,
        start_after: str = "",
    ) -> tuple[list[ExecutionRecord], str]:
        """Records in creation order after the *start_after* cursor; returns the page
        and the cursor of the next page ("" when this was the last)."""
        after = -1
        if start_after:
            cursor = self._records.get(start_after)
            if cursor is None:
                raise SpearError(ErrorCode.INVALID_ARGUMENT, f"start_after {start_after!r} is not a known execution")
            after = cursor.seq
        page: list[ExecutionRecord] = []
        for record in self._iter_after(after):
            if task_id and record.task_id != task_id:
                continue
            if statuses and record.status not in statuses:
                continue
            if len(page) == limit:
                return page, page[-1].execution_id
            page.append(record)
        return page, ""

    def _iter_after(self, seq: int) -> Iterator[ExecutionRecord]:
        for record in self._records.values():
            if record.seq > seq:
                yield record

    def live(self, task_id: str) -> list[ExecutionRecord]:
        """The task's executions that have not finished."""
        return [r for r in self._records.values() if r.task_id == task_id and not r.finished]

    def _move(self, record: ExecutionRecord, status: ExecutionStatus) -> None:
        self.counts[record.status] -= 1
        record.status = status
        self.counts[status] += 1

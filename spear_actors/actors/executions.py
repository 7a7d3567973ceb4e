"""The execution registry: one record per execution, owned by the manager actor.

Plain data structures, no trio tasks: the manager calls it from its handler.
Finished records are kept in memory up to ``max_records``, ``max_age_s`` and
``max_result_bytes_total`` of results (oldest evicted first); unfinished ones are
never evicted (admission control bounds them). Every record is also written to the
:class:`~spear_actors.store.ExecutionStore` when it is created and when it ends; a
persistent store keeps it after it leaves memory.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Iterator
from typing import Any

from ..errors import ErrorCode, SpearError
from ..model import ExecutionMode, ExecutionStatus
from ..store import ExecutionRow, ExecutionStore, MemoryStore, pack, unpack
from .mailbox import Reply
from .messages import Outcome

__all__ = ["ExecutionRecord", "ExecutionRegistry", "LatencyWindow", "not_found", "status_for"]


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
        "result_bytes",
        "result_dropped_bytes",
        "seq",
        "started_at",
        "status",
        "task_id",
        "watchers",
        "write_seq",
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
        self.result_bytes = 0
        """Encoded size of the retained result (what the node-wide byte cap counts)."""
        self.result_dropped_bytes: int | None = None
        """Encoded size of a result too large to retain (the result itself is not kept)."""
        self.write_seq = 0
        """The store's sequence number of this record's last write."""
        self.watchers: list[Reply[Outcome]] | None = None
        """Replies to answer when the execution ends (duplicate submits, waiters)."""

    @classmethod
    def from_row(cls, row: ExecutionRow, seq: int = -1) -> ExecutionRecord:
        """The record a store row describes."""
        try:
            mode = ExecutionMode(row.mode)
        except ValueError:
            mode = ExecutionMode.SYNC
        record = cls(seq, row.execution_id, row.task_id, row.function_name, mode)
        record.status = ExecutionStatus(row.status)
        record.instance_id = row.instance_id
        record.created_at = row.created_at
        record.started_at = row.started_at
        record.completed_at = row.completed_at
        record.execution_time_ms = row.execution_time_ms
        record.error = row.error_value()
        record.result = unpack(row.result)
        record.result_bytes = len(row.result or b"")
        record.result_dropped_bytes = row.result_dropped_bytes
        record.logs = unpack(row.logs)
        return record

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
            if self.result_dropped_bytes is not None:
                out["result_dropped"] = {"size_bytes": self.result_dropped_bytes}
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
    """Records by id, in creation order, with bounded retention of finished ones.

    *max_result_bytes* caps one retained result (a larger one is kept as a marker
    with its size), *max_result_bytes_total* the results held in memory over all
    records, *max_log_bytes* one record's logs (the rest is cut with a marker line).
    """

    def __init__(
        self,
        max_records: int = 10_000,
        max_age_s: float = 3600.0,
        *,
        store: ExecutionStore | None = None,
        max_result_bytes: int = 1024**2,
        max_result_bytes_total: int = 256 * 1024**2,
        max_log_bytes: int = 1024**2,
    ) -> None:
        self.max_records = max_records
        self.max_age_s = max_age_s
        self.store: ExecutionStore = store if store is not None else MemoryStore()
        self.max_result_bytes = max_result_bytes
        self.max_result_bytes_total = max_result_bytes_total
        self.max_log_bytes = max_log_bytes
        self.result_bytes = 0
        """Bytes of results held by the finished records in memory."""
        self._records: dict[str, ExecutionRecord] = {}
        self._finished: collections.deque[ExecutionRecord] = collections.deque()
        self._seq = itertools.count()
        self.counts: collections.Counter[ExecutionStatus] = collections.Counter()
        """How many executions are in each status now (live) or ended in it (terminal)."""

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, execution_id: str) -> bool:
        return execution_id in self._records

    def get(self, execution_id: str) -> ExecutionRecord | None:
        """The record, if it exists and has not been evicted."""
        return self._records.get(execution_id)

    def require(self, execution_id: str) -> ExecutionRecord:
        """The record, or NOT_FOUND."""
        record = self._records.get(execution_id)
        if record is None:
            raise not_found(execution_id)
        return record

    def create(
        self, execution_id: str, task_id: str, function_name: str, mode: ExecutionMode, request: bytes | None = None
    ) -> ExecutionRecord:
        """Register a new PENDING execution (and queue its write to the store, with
        *request*: what to run again if the node dies before it ends)."""
        record = ExecutionRecord(next(self._seq), execution_id, task_id, function_name, mode)
        self._records[execution_id] = record
        self.counts[ExecutionStatus.PENDING] += 1
        if self.store.persistent and mode is ExecutionMode.ASYNC:
            # An ASYNC call is acknowledged once this is durable: commit it promptly.
            # (A SYNC or STREAM caller holds the answer itself: its record is written
            # when it ends; one the node's death cuts short leaves no record, and the
            # caller, whose connection dropped, may submit its id again.)
            row = _row(record, None, None)
            row.request = request
            record.write_seq = self.store.save(row, urgent=True)
        return record

    def forget(self, execution_id: str) -> None:
        """Drop a finished record from memory (a resubmitted id that may run again)."""
        record = self._records.pop(execution_id, None)
        if record is not None:
            try:
                self._finished.remove(record)
            except ValueError:
                pass
            self.result_bytes -= record.result_bytes

    def restore(self, row: ExecutionRow) -> ExecutionRecord:
        """Put a finished record read from the store back in memory (at start-up)."""
        record = ExecutionRecord.from_row(row, next(self._seq))
        self._records[record.execution_id] = record
        self._finished.append(record)
        self.result_bytes += record.result_bytes
        self.counts[record.status] += 1
        return record

    def started(self, record: ExecutionRecord, instance_id: str, started_at: float) -> None:
        """PENDING → RUNNING on *instance_id* since *started_at* (wall-clock time)."""
        if record.status is ExecutionStatus.PENDING:
            self._move(record, ExecutionStatus.RUNNING)
            record.instance_id = instance_id
            record.started_at = started_at
        elif record.status is ExecutionStatus.RUNNING:
            record.instance_id = instance_id  # moved: its first instance died before starting it

    def finish(self, record: ExecutionRecord, outcome: Outcome | None, error: SpearError | None) -> bool:
        """Record the end (first one wins); answer the watchers; queue the write.
        Returns False if it had already finished."""
        if record.finished:
            return False
        record.completed_at = time.time()
        blob: bytes | None = None
        if outcome is not None:
            logs = self._capped_logs(outcome.logs)
            if outcome.result is not None:
                blob = pack(outcome.result)
            if blob is not None and len(blob) > self.max_result_bytes:
                record.result_dropped_bytes = len(blob)
                blob = None
            else:
                record.result = outcome.result
                record.result_bytes = len(blob or b"")
            record.logs = logs or None
            record.instance_id = outcome.instance_id or record.instance_id
            record.execution_time_ms = outcome.execution_time_ms
            self._move(record, ExecutionStatus.COMPLETED)
        else:
            assert error is not None
            raw_logs = error.details.get("logs")
            logs = self._capped_logs(raw_logs) if isinstance(raw_logs, list) else None
            if logs is not raw_logs and logs is not None:
                error = SpearError(error.code, error.message, {**error.details, "logs": logs})
            record.error = error
            record.logs = logs
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
        self.result_bytes += record.result_bytes
        if self.store.persistent:
            record.write_seq = self.store.save(_row(record, blob, record.logs))
        self.evict()
        return True

    def _capped_logs(self, logs: list[str] | None) -> list[str] | None:
        """*logs* cut at ``max_log_bytes`` (with a line saying how much was dropped)."""
        if not logs:
            return logs
        budget = self.max_log_bytes
        for index, line in enumerate(logs):
            budget -= len(line.encode(errors="replace"))
            if budget < 0:
                dropped = sum(len(rest.encode(errors="replace")) for rest in logs[index:])
                return [
                    *logs[:index],
                    f"[spear] {dropped} bytes of logs dropped (max_log_bytes_per_record = {self.max_log_bytes})",
                ]
        return logs

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
        """Drop finished records from memory past the count, age or result-bytes
        limit, oldest first (a persistent store still has them)."""
        now = time.time() if now is None else now
        finished = self._finished
        durable = self.store.durable_seq
        while (
            finished
            and (
                len(finished) > self.max_records
                or self.result_bytes > self.max_result_bytes_total
                or now - (finished[0].completed_at or 0) > self.max_age_s
            )
            and finished[0].write_seq <= durable  # else the disk has not got its end yet
        ):
            old = finished.popleft()
            self.result_bytes -= old.result_bytes
            if self._records.get(old.execution_id) is old:
                del self._records[old.execution_id]

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

    def live(self, task_id: str = "") -> list[ExecutionRecord]:
        """The task's executions (every task's with "") that have not finished."""
        return [r for r in self._records.values() if (not task_id or r.task_id == task_id) and not r.finished]

    def _move(self, record: ExecutionRecord, status: ExecutionStatus) -> None:
        self.counts[record.status] -= 1
        record.status = status
        self.counts[status] += 1


def not_found(execution_id: str) -> SpearError:
    """NOT_FOUND for an execution id no store knows."""
    return SpearError(ErrorCode.NOT_FOUND, f"execution {execution_id!r} not found (or evicted)")


def _row(record: ExecutionRecord, result: bytes | None, logs: list[str] | None) -> ExecutionRow:
    """The store's row for *record* (its result already encoded as *result*)."""
    return ExecutionRow(
        execution_id=record.execution_id,
        task_id=record.task_id,
        function_name=record.function_name,
        mode=record.mode.value,
        status=record.status.value,
        instance_id=record.instance_id,
        created_at=record.created_at,
        started_at=record.started_at,
        completed_at=record.completed_at,
        execution_time_ms=record.execution_time_ms,
        error=None if record.error is None else pack(record.error.to_dict()),
        result=result,
        result_dropped_bytes=record.result_dropped_bytes,
        logs=None if not logs else pack(logs),
    )

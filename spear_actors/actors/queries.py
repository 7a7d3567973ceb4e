"""The manager's read-only queries: execution records, tasks, health, statistics.

A mixin of :class:`~.manager.ManagerActor`, kept apart because answering questions
is a different job from routing calls; it reads the manager's state and changes
none of it (except evicting records past their age).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..api import MAX_LIST_LIMIT
from ..errors import ErrorCode, SpearError
from ..model import ExecutionStatus
from ..store import ExecutionRow
from .executions import ExecutionRegistry, LatencyWindow, not_found
from .mailbox import Reply
from .messages import GetTaskInfo, Query

if TYPE_CHECKING:
    from .task_table import _TaskEntry

__all__ = ["ManagerQueries"]

log = logging.getLogger(__name__)

_NODE_LATENCY_SAMPLES = 65_536


class ManagerQueries:
    """``Query(method, params, reply)`` → the ``_q_<method>`` of that name."""

    registry: ExecutionRegistry
    draining: str | None
    _tasks: dict[str, _TaskEntry]
    _by_name: dict[str, str]
    _started_at: float

    def lookup(self, execution_id: str, then: Callable[[ExecutionRow | SpearError | None], None]) -> None:
        raise NotImplementedError  # the manager's (reads the store in a worker thread)

    def _query(self, message: Query) -> None:
        self.registry.evict()  # age limits apply even when nothing finishes
        handlers: dict[str, Callable[..., Any]] = {
            "get_execution": self._q_get_execution,
            "list_executions": self._q_list_executions,
            "list_tasks": self._q_list_tasks,
            "get_task": self._q_get_task,
            "get_health": self._q_get_health,
            "get_stats": self._q_get_stats,
        }
        try:
            handler = handlers.get(message.method)
            if handler is None:
                raise SpearError(ErrorCode.NOT_FOUND, f"no such query: {message.method!r}")
            # params were validated by the caller (the node's methods, the api table):
            # a TypeError here is a bug, answered INTERNAL, never INVALID_ARGUMENT
            result = handler(**message.params)
        except SpearError as exc:
            message.reply.fail(exc)
        except Exception as exc:
            log.error("query %s failed (a bug; answered INTERNAL)", message.method, exc_info=exc)
            message.reply.fail(
                SpearError(ErrorCode.INTERNAL, f"{message.method}: internal error ({type(exc).__name__})")
            )
        else:
            if isinstance(result, Reply):  # answered later, by another actor
                result.on_done = lambda done: _forward(done, message.reply)
            else:
                message.reply.send(result)

    def _q_get_execution(
        self, execution_id: str, include_result: bool = True, include_logs: bool = False
    ) -> dict[str, Any] | Reply[dict[str, Any]]:
        record = self.registry.get(execution_id)
        if record is not None:
            return record.to_dict(include_result, include_logs)
        if not self.registry.store.persistent:
            raise not_found(execution_id)
        # Finished and no longer in memory: the store may still have it.
        answer: Reply[dict[str, Any]] = Reply()

        def then(row: ExecutionRow | SpearError | None) -> None:
            if isinstance(row, SpearError):
                answer.fail(row)
            elif row is None:
                answer.fail(not_found(execution_id))
            else:
                answer.send(row.to_dict(include_result, include_logs))

        self.lookup(execution_id, then)
        return answer

    def _q_list_executions(
        self, task_id: str = "", status_filter: list[str] | None = None, limit: int = 100, start_after: str = ""
    ) -> dict[str, Any]:
        statuses = {_status(s) for s in status_filter or ()}
        page, cursor = self.registry.page(
            task_id=task_id, statuses=statuses, limit=_limit(limit), start_after=start_after
        )
        return {"executions": [r.to_dict(include_result=False) for r in page], "next_start_after": cursor}

    def _q_list_tasks(self, prefix: str = "", limit: int = 100, start_after: str = "") -> dict[str, Any]:
        size = _limit(limit)
        # the page's names and one more (to know whether a next page exists), without
        # sorting every task name: O(n log page) per request
        names = heapq.nsmallest(
            size + 1,
            (name for name in self._by_name if name.startswith(prefix) and (not start_after or name > start_after)),
        )
        page = names[:size]
        cursor = page[-1] if len(names) > len(page) else ""
        return {"tasks": [self._tasks[self._by_name[name]].summary() for name in page], "next_start_after": cursor}

    def _q_get_task(
        self, task_id: str, include_executions: bool = False, execution_limit: int = 20
    ) -> Reply[dict[str, Any]]:
        entry = self._tasks.get(task_id)
        if entry is None:
            raise SpearError(ErrorCode.NOT_FOUND, f"task {task_id!r} not found")
        recent = None
        if include_executions:
            page, _ = self.registry.page(task_id=task_id, limit=10**9)
            recent = [r.to_dict(include_result=False) for r in page[-_limit(execution_limit) :]]
        status = entry.status.value
        answer: Reply[dict[str, Any]] = Reply()

        def complete(done: Reply[dict[str, Any]]) -> None:
            # Runs when the task actor answers: add the manager's view to its own.
            if done.value is not None:
                answer.send({**done.value, "status": status, "executions": recent})
            else:
                answer.fail(done.error or SpearError(ErrorCode.INTERNAL, "task gave no answer"))

        live_view: Reply[dict[str, Any]] = Reply()
        live_view.on_done = complete
        entry.ref.post(GetTaskInfo(live_view))
        return answer

    def _q_get_health(self) -> dict[str, Any]:
        counts = self.registry.counts
        return {
            "status": "DRAINING" if self.draining else "SERVING",
            "uptime_s": round(time.time() - self._started_at, 3),
            "tasks": len(self._tasks),
            "instances": sum(entry.instances for entry in self._tasks.values()),
            "running_executions": counts[ExecutionStatus.RUNNING],
            "pending_executions": counts[ExecutionStatus.PENDING],
        }

    def _q_get_stats(self) -> dict[str, Any]:
        tasks = {}
        node_latency = LatencyWindow(size=_NODE_LATENCY_SAMPLES)
        # the node's percentiles from a bounded sample: each task's most recent
        # executions, at most _NODE_LATENCY_SAMPLES in all (one sort, whatever the task count)
        per_task = max(1, _NODE_LATENCY_SAMPLES // max(1, len(self._tasks)))
        for entry in self._tasks.values():
            samples = entry.latency.samples
            node_latency.samples.extend(itertools.islice(samples, max(0, len(samples) - per_task), None))
            tasks[entry.definition.task_id] = {
                "task_name": entry.definition.task_name,
                "instances": entry.instances,
                "counts": dict(entry.counts),
                "latency_ms": _percentiles(entry.latency),
            }
        return {
            "node": {
                "counts": {status.value: n for status, n in self.registry.counts.items() if n},
                "latency_ms": _percentiles(node_latency),
                "instances": sum(entry.instances for entry in self._tasks.values()),
                "retained_records": len(self.registry),
                "retained_result_bytes": self.registry.result_bytes,
                "store": self.registry.store.stats(),
            },
            "tasks": tasks,
        }


def _forward(done: Reply[Any], to: Reply[Any]) -> None:
    if done.error is not None:
        to.fail(done.error)
    else:
        to.send(done.value)


def _percentiles(window: LatencyWindow) -> dict[str, float | None]:
    return {"p50": window.percentile(0.5), "p95": window.percentile(0.95), "p99": window.percentile(0.99)}


def _limit(limit: object) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise SpearError(ErrorCode.INVALID_ARGUMENT, f"limit must be an integer from 1 to {MAX_LIST_LIMIT:,}")
    return limit


def _status(name: object) -> ExecutionStatus:
    try:
        return ExecutionStatus(str(name).upper())
    except ValueError:
        raise SpearError(ErrorCode.INVALID_ARGUMENT, f"unknown execution status {name!r}") from None

"""The SQLite store, as the trio loop sees it: writes queued to the writer thread
(:mod:`.writer`), durability awaited per write, reads in a worker thread."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from ..errors import ErrorCode, SpearError
from .base import ExecutionRow, ExecutionStore, RecoveredState, StoredTask
from .writer import Retention, SqliteFile

__all__ = ["SqliteStore"]


class SqliteStore(ExecutionStore):
    """Execution records, tasks and the node's identity in ``<data_dir>/state/spear.sqlite3``.

    *max_backlog* bounds the writes queued for the writer thread: past it,
    :meth:`backlogged` is True and the node refuses new calls (RESOURCE_EXHAUSTED)
    until the writer catches up, so a slow disk is backpressure, never unbounded memory.
    """

    persistent = True

    def __init__(
        self, data_dir: Path, retention: Retention, *, synchronous: str = "NORMAL", max_backlog: int = 50_000
    ) -> None:
        self.file = SqliteFile(Path(data_dir) / "state", retention, synchronous)
        self.max_backlog = max_backlog
        self._committed = 0
        self._failed: BaseException | None = None
        self._waiters: list[tuple[int, int, trio.Event]] = []
        self._tie = itertools.count()
        self._token: trio.lowlevel.TrioToken | None = None
        self._open = False
        self._reads = 0

    async def open(self, node_id: str, recent: int) -> RecoveredState:
        state = await trio.to_thread.run_sync(self.file.open, node_id, recent)
        self._token = trio.lowlevel.current_trio_token()
        self.file.start(self._from_writer)
        self._open = True
        return state

    def set_identity(self, node_id: str) -> None:
        """Replace the stored node identity (an explicit ``node_id`` in the config)."""
        self.file.set_identity(node_id)

    async def aclose(self) -> None:
        if not self._open:
            return
        self._open = False
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.file.close)
        self._wake_waiters()

    def _from_writer(self, seq: int, error: BaseException | None) -> None:
        # In the writer thread: hand over to the loop, never touch state here.
        token = self._token
        if token is None:
            return
        try:
            token.run_sync_soon(self._on_commit, seq, error)
        except trio.RunFinishedError:
            pass

    def _on_commit(self, seq: int, error: BaseException | None) -> None:
        if error is not None:
            self._failed = error
        else:
            self._committed = max(self._committed, seq)
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        waiters = self._waiters
        everything = self._failed is not None or not self._open
        while waiters and (everything or waiters[0][0] <= self._committed):
            heapq.heappop(waiters)[2].set()

    def save(self, row: ExecutionRow, urgent: bool = False) -> int:
        return self.file.save(row, urgent)

    async def committed(self, seq: int) -> None:
        if seq > self._committed and self._failed is None and self._open:
            event = trio.Event()
            heapq.heappush(self._waiters, (seq, next(self._tie), event))
            await event.wait()
        if seq > self._committed:
            reason = f"{type(self._failed).__name__}: {self._failed}" if self._failed else "store closed"
            raise SpearError(ErrorCode.UNAVAILABLE, f"execution store could not record the call ({reason})")

    @property
    def durable_seq(self) -> int:
        return self._committed

    def backlogged(self) -> bool:
        return self._failed is not None or self.file.backlog > self.max_backlog

    async def load(self, execution_id: str) -> ExecutionRow | None:
        self._reads += 1
        return await trio.to_thread.run_sync(self.file.load, execution_id)

    async def load_many(self, execution_ids: Sequence[str]) -> dict[str, ExecutionRow]:
        self._reads += 1
        return await trio.to_thread.run_sync(self.file.load_many, list(execution_ids))

    def save_task(self, task: StoredTask) -> None:
        self.file.save_task(task)

    def delete_task(self, task_id: str) -> None:
        self.file.delete_task(task_id)

    def stats(self) -> dict[str, Any]:
        file = self.file
        return {
            "kind": "sqlite",
            "rows": file.rows,
            "bytes": file.bytes,
            "backlog": file.backlog,
            "commits": file.commits,
            "written": file.written,
            "pruned": file.pruned,
            "writer_cpu_s": round(file.cpu_s, 3),
            "locked": file.locked,
            "reads": self._reads,
            "failed": None if self._failed is None else repr(self._failed),
        }

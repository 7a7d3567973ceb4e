"""The SQLite side of the store: schema, recovery, the writer thread and pruning.

Nothing here touches trio. The writer thread takes every queued write at once,
applies it in one transaction (group commit) and reports the last sequence number
committed; between batches it prunes by age, count and bytes in small transactions
so a prune never holds up writes for long.
"""

from __future__ import annotations

import collections
import dataclasses
import fcntl
import itertools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ErrorCode, SpearError
from .base import ExecutionRow, RecoveredState, StoredTask, node_restarted_error, pack, unpack

__all__ = ["Retention", "SqliteFile"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_COLUMNS = (
    "execution_id",
    "task_id",
    "function_name",
    "mode",
    "status",
    "instance_id",
    "created_at",
    "started_at",
    "completed_at",
    "execution_time_ms",
    "error",
    "result",
    "result_dropped_bytes",
    "logs",
    "request",
    "size",
)
_ROWS_PER_UPSERT = 32
"""Rows one statement writes (32 rows of 16 columns: 512 parameters, under SQLite's 999):
the sqlite3 module releases the GIL for every step of a statement, and each step's
return has to win the GIL back from the trio thread — a hand-over per statement
instead of per row."""


def _upsert(rows: int) -> str:
    """The statement writing *rows* rows (a newer version of a row replaces it)."""
    one = f"({', '.join('?' * len(_COLUMNS))})"
    return (
        f"INSERT INTO executions({', '.join(_COLUMNS)}) VALUES {', '.join([one] * rows)} "
        f"ON CONFLICT(execution_id) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c != "execution_id")
    )


_UPSERT_FULL = _upsert(_ROWS_PER_UPSERT)
_SELECT = f"SELECT {', '.join(_COLUMNS[:-1])} FROM executions"
_LIVE = ("PENDING", "RUNNING")
_PRUNE_ROUND = 2000
_PRUNE_ROUNDS_PER_BATCH = 10
_MAX_BATCH = 20_000
_IDS_PER_QUERY = 500
_GROUP_MIN = 256
_GROUP_DELAY_S = 0.005
_BUSY_TIMEOUT_S = 1.0
_LOCKED_AT_CLOSE_S = 10.0
_URGENT_DELAY_S = 0.003


@dataclasses.dataclass(slots=True)
class Retention:
    """How long finished records stay on disk: all three limits apply."""

    max_age_s: float = 3600.0
    max_records: int = 12_000_000
    max_bytes: int = 4 * 1024**3
    prune_interval_s: float = 1.0


def _row_values(row: ExecutionRow) -> tuple[Any, ...]:
    return (
        row.execution_id,
        row.task_id,
        row.function_name,
        row.mode,
        row.status,
        row.instance_id,
        row.created_at,
        row.started_at,
        row.completed_at,
        row.execution_time_ms,
        row.error,
        row.result,
        row.result_dropped_bytes,
        row.logs,
        row.request,
        row.size,
    )


def _row(values: Any) -> ExecutionRow:
    return ExecutionRow(*values)


class SqliteFile:
    """One SQLite database under ``<data_dir>/state``, held exclusively by one node."""

    def __init__(self, directory: Path, retention: Retention, synchronous: str = "NORMAL") -> None:
        self.directory = directory
        self.path = directory / "spear.sqlite3"
        self.retention = retention
        self.synchronous = synchronous
        self._lock_fd: int | None = None
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        self._queue: collections.deque[tuple[int, str, Any, bool]] = collections.deque()
        self._wake = threading.Condition()
        self._idle = False
        self._gathering = False
        self._urgent_seq = 0
        self._closing = False
        self._thread: threading.Thread | None = None
        self._notify: Callable[[int, BaseException | None], None] = lambda seq, error: None
        self._next_seq = 0
        self._live_sizes: dict[str, int] = {}
        self.rows = 0
        self.bytes = 0
        self.commits = 0
        self.written = 0
        self.pruned = 0
        self.locked = False
        """True while writes wait for another process's lock on the file."""
        self.cpu_s = 0.0
        """CPU seconds the writer thread spent writing and pruning."""
        self._last_prune = 0.0

    # -- open / recover (in a worker thread) -------------------------------------------
    def open(self, node_id: str, recent: int) -> RecoveredState:
        """Lock the directory, open or create the database, fail what was left
        unfinished by a dead node, and return what is needed to start."""
        try:
            return self._open(node_id, recent)
        except (OSError, sqlite3.Error) as exc:
            self.close()
            raise SpearError(
                ErrorCode.FAILED_PRECONDITION, f"cannot open the execution store {str(self.path)!r}: {exc}"
            ) from None

    def _open(self, node_id: str, recent: int) -> RecoveredState:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpearError(
                ErrorCode.FAILED_PRECONDITION,
                f"data dir {str(self.directory.parent)!r} is in use by another running node",
            ) from None
        self._lock_fd = fd
        db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        self._db = db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        db.execute(
            "CREATE TABLE IF NOT EXISTS executions (seq INTEGER PRIMARY KEY, execution_id TEXT NOT NULL UNIQUE, "
            "task_id TEXT, function_name TEXT, mode TEXT, status TEXT, instance_id TEXT, created_at REAL, "
            "started_at REAL, completed_at REAL, execution_time_ms REAL, error BLOB, result BLOB, "
            "result_dropped_bytes INTEGER, logs BLOB, request BLOB, size INTEGER)"
        )
        db.execute("CREATE TABLE IF NOT EXISTS tasks (task_id TEXT PRIMARY KEY, body BLOB)")
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        db.execute("INSERT OR IGNORE INTO meta VALUES ('node_id', ?)", (node_id,))
        stored_id = db.execute("SELECT value FROM meta WHERE key = 'node_id'").fetchone()[0]
        resubmit = [
            _row(values)
            for values in db.execute(f"{_SELECT} WHERE status IN (?, ?) AND request IS NOT NULL ORDER BY seq", _LIVE)
        ]
        aborted = db.execute(
            "UPDATE executions SET status = 'FAILED', error = ?, completed_at = ? "
            "WHERE status IN (?, ?) AND request IS NULL",
            (pack(node_restarted_error().to_dict()), time.time(), *_LIVE),
        ).rowcount
        tasks = []
        for (body,) in db.execute("SELECT body FROM tasks ORDER BY rowid"):
            try:
                tasks.append(StoredTask(**unpack(body)))
            except (TypeError, ValueError) as exc:
                log.warning("store: a stored task could not be read (%s); skipped", exc)
        rows = db.execute(f"{_SELECT} ORDER BY seq DESC LIMIT ?", (recent,)).fetchall()
        self.rows, self.bytes = db.execute("SELECT count(*), total(size) FROM executions").fetchone()
        self.bytes = int(self.bytes)
        self._reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        finished = [_row(values) for values in reversed(rows) if values[4] not in _LIVE]
        return RecoveredState(stored_id, tasks, finished, aborted, resubmit)

    def set_identity(self, node_id: str) -> None:
        """Store *node_id* as the node's identity (an explicit config id)."""
        self._submit("meta", ("node_id", node_id))

    # -- the writer thread ---------------------------------------------------------------
    def start(self, notify: Callable[[int, BaseException | None], None]) -> None:
        """Start the writer thread; *notify(seq, error)* is called (in the writer
        thread) after each commit, or once with the error that stopped it."""
        self._notify = notify
        self._thread = threading.Thread(target=self._run, name=f"spear-store {self.path}", daemon=True)
        self._thread.start()

    def _submit(self, kind: str, payload: Any, urgent: bool = False) -> int:
        # One producer (the trio thread): no lock to queue, only to wake a writer that
        # sleeps (idle) or gathers a batch while someone now waits for a commit.
        self._next_seq += 1
        seq = self._next_seq
        self._queue.append((seq, kind, payload, urgent))
        if urgent:
            self._urgent_seq = seq
        if self._idle or (urgent and self._gathering):
            with self._wake:
                self._wake.notify()
        return seq

    def save(self, row: ExecutionRow, urgent: bool = False) -> int:
        """Queue *row*; returns its write sequence number (never blocks for I/O).
        *urgent*: a caller waits for its commit, so it is committed without gathering."""
        return self._submit("row", row, urgent)

    def save_task(self, task: StoredTask) -> int:
        return self._submit("task", task)

    def delete_task(self, task_id: str) -> int:
        return self._submit("untask", task_id)

    @property
    def backlog(self) -> int:
        """Writes queued and not yet taken by the writer."""
        return len(self._queue)

    def close(self) -> None:
        """Stop the writer after it has written everything queued (blocking)."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for db in (self._db, self._reader):
            if db is not None:
                db.close()
        self._db = self._reader = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _run(self) -> None:
        queue = self._queue
        committed = 0
        waited_for = 0  # writes in the last batch that a caller waited for
        try:
            while True:
                with self._wake:
                    self._idle = True
                    while not queue and not self._closing:
                        if not self._wake.wait(self.retention.prune_interval_s):
                            break
                    self._idle = False
                    closing = self._closing
                if queue and not closing:
                    # Group commit: writes nobody waits for (records ending, SYNC
                    # calls starting) gather for a moment, so one transaction carries
                    # many (one commit per write would cost more than the call); a write
                    # whose caller waits (an ASYNC acknowledgement) ends the gathering.
                    with self._wake:
                        self._gathering = True
                        if self._urgent_seq <= committed and len(queue) < _GROUP_MIN:
                            self._wake.wait(_GROUP_DELAY_S)
                        self._gathering = False
                    if waited_for > 1 and len(queue) < _GROUP_MIN:
                        # Callers waited for several writes last time: under load, a
                        # little latency buys far fewer commits.
                        time.sleep(_URGENT_DELAY_S)
                batch: list[tuple[str, Any]] = []
                upto = 0
                waited_for = 0
                while queue and len(batch) < _MAX_BATCH:
                    upto, kind, payload, urgent = queue.popleft()
                    batch.append((kind, payload))
                    waited_for += urgent
                began = time.thread_time()
                if batch:
                    self._write_until_done(batch)
                    committed = upto
                    self._notify(upto, None)
                self._maybe_prune()
                self.cpu_s += time.thread_time() - began
                if closing and not queue:
                    return
        except BaseException as exc:  # disk full, I/O error: callers must learn it
            log.exception("store: the writer stopped")
            self._notify(-1, exc)

    def _write_until_done(self, batch: list[tuple[str, Any]]) -> None:
        """Write *batch*, waiting out another process's lock on the file (a transient
        condition: meanwhile writes queue up and the backlog limit refuses new calls).
        Any other error stops the writer. While closing, a lock held past
        ``_LOCKED_AT_CLOSE_S`` is an error too (a shutdown never hangs on it)."""
        locked_since: float | None = None
        while True:
            try:
                self._write(batch)
                self.locked = False
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                now = time.monotonic()
                self.locked = True
                if locked_since is None:
                    locked_since = now
                    log.warning("store: %s is locked by another process; writes wait (%s)", self.path, exc)
                if self._closing and now - locked_since > _LOCKED_AT_CLOSE_S:
                    raise
                time.sleep(0.05)

    def _write(self, batch: list[tuple[str, Any]]) -> None:
        assert self._db is not None
        rows: dict[str, ExecutionRow] = {}
        other: list[tuple[str, Any]] = []
        for kind, payload in batch:
            if kind == "row":
                rows[payload.execution_id] = payload  # full rows: the last write wins
            else:
                other.append((kind, payload))
        db = self._db
        values = [_row_values(row) for row in rows.values()]
        full = len(values) - len(values) % _ROWS_PER_UPSERT
        db.execute("BEGIN")
        try:
            if full:
                db.executemany(
                    _UPSERT_FULL,
                    (
                        list(itertools.chain.from_iterable(values[start : start + _ROWS_PER_UPSERT]))
                        for start in range(0, full, _ROWS_PER_UPSERT)
                    ),
                )
            if full < len(values):
                db.execute(_upsert(len(values) - full), list(itertools.chain.from_iterable(values[full:])))
            for kind, payload in other:
                if kind == "task":
                    db.execute(
                        "INSERT OR REPLACE INTO tasks VALUES (?, ?)",
                        (payload.task_id, pack(dataclasses.asdict(payload))),
                    )
                elif kind == "untask":
                    db.execute("DELETE FROM tasks WHERE task_id = ?", (payload,))
                elif kind == "meta":
                    db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", payload)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        # Accounting only once committed (a batch may be tried again after a lock).
        for row in rows.values():
            size = row.size
            old = self._live_sizes.pop(row.execution_id, None)
            if old is None:
                self.rows += 1
                old = 0
            if row.status in _LIVE:
                self._live_sizes[row.execution_id] = size
            self.bytes += size - old
        self.commits += 1
        self.written += len(rows)

    def _maybe_prune(self) -> None:
        retention = self.retention
        now = time.time()
        over = self.rows > retention.max_records or self.bytes > retention.max_bytes
        if not over and now - self._last_prune < retention.prune_interval_s:
            return
        self._last_prune = now
        for _ in range(_PRUNE_ROUNDS_PER_BATCH):
            if self._prune_round(now) < _PRUNE_ROUND:
                return

    def _prune_round(self, now: float) -> int:
        """Delete the oldest finished rows past a limit; returns how many rows were looked at."""
        assert self._db is not None
        retention = self.retention
        cutoff = now - retention.max_age_s
        excess_rows = self.rows - retention.max_records
        excess_bytes = self.bytes - retention.max_bytes
        # Stepped lazily: when the oldest row is within every limit (the usual case),
        # one row is read, not a round's worth.
        rows = self._db.execute(
            "SELECT seq, status, completed_at, size FROM executions ORDER BY seq LIMIT ?", (_PRUNE_ROUND,)
        )
        doomed: list[tuple[int]] = []
        freed = 0
        within = False
        scanned = 0
        for seq, status, completed_at, size in rows:
            scanned += 1
            if status in _LIVE:
                continue
            if excess_rows > 0 or excess_bytes > 0 or (completed_at or 0) < cutoff:
                doomed.append((seq,))
                excess_rows -= 1
                excess_bytes -= size or 0
                freed += size or 0
            else:
                within = True  # everything after this is newer and within every limit
                break
        rows.close()  # before writing: no statement in progress
        if doomed:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM executions WHERE seq = ?", doomed)
            self._db.execute("COMMIT")
            self.rows -= len(doomed)
            self.bytes -= freed
            self.pruned += len(doomed)
        return 0 if within or not doomed else scanned

    # -- reads (in a worker thread) -----------------------------------------------------
    def load(self, execution_id: str) -> ExecutionRow | None:
        """The record of *execution_id* from disk."""
        with self._reader_lock:
            if self._reader is None:
                return None
            found = self._reader.execute(f"{_SELECT} WHERE execution_id = ?", (execution_id,)).fetchone()
        return None if found is None else _row(found)

    def load_many(self, execution_ids: list[str]) -> dict[str, ExecutionRow]:
        """The records of *execution_ids* found on disk, by id: ``IN (...)`` queries of
        a few hundred ids each (under SQLite's variable limit)."""
        found: dict[str, ExecutionRow] = {}
        with self._reader_lock:
            if self._reader is None:
                return found
            for start in range(0, len(execution_ids), _IDS_PER_QUERY):
                ids = execution_ids[start : start + _IDS_PER_QUERY]
                marks = ",".join("?" * len(ids))
                for raw in self._reader.execute(f"{_SELECT} WHERE execution_id IN ({marks})", ids):
                    row = _row(raw)
                    found[row.execution_id] = row
        return found

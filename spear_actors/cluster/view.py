"""A local copy of the cluster's nodes and task claims, kept current by one etcd watch.

Routing asks "who owns task X, where is node Y, which node is least loaded" on every
call; answering from memory instead of an etcd read per call is what this is for.
The copy is a snapshot read at one revision followed by a watch from the next one, so
no change is missed; when the watch breaks (etcd gone, or the registry lost it) the
copy is kept but marked stale, and rebuilt from a fresh snapshot when etcd answers.

Lookups are eventually consistent: a claim made a moment ago on another node may not
be here yet (``wait_revision`` waits for a known revision), and an owner found here
may have died since. A miss for a name should be confirmed with the registry (or
claimed, which settles it); a call to a dead owner fails with UNAVAILABLE and is
retried after the owner's disappearance reaches the view.
"""

from __future__ import annotations

import time
from typing import NoReturn

import trio

from ..errors import SpearError
from .records import ClusterSnapshot, ClusterState, NodeEvent, NodeInfo, TaskEntry, TaskEvent
from .registry import ClusterRegistry

__all__ = ["ClusterView"]


class ClusterView:
    """The cluster as last seen; start :meth:`run` with ``nursery.start``."""

    def __init__(self, registry: ClusterRegistry) -> None:
        self._registry = registry
        self._nodes: dict[str, NodeInfo] = {}
        self._tasks: dict[str, TaskEntry] = {}
        self._task_names_by_id: dict[str, str] = {}
        self._revision = 0
        self._fresh = False
        self._since = time.time()
        self._last_error: str | None = None
        self._advanced = trio.Event()

    # -- lookups (no I/O) -------------------------------------------------------------

    @property
    def fresh(self) -> bool:
        """True while the watch is running: the copy is current up to ``revision``."""
        return self._fresh

    @property
    def revision(self) -> int:
        """The etcd revision the copy reflects."""
        return self._revision

    @property
    def last_error(self) -> str | None:
        """Why the copy is stale, when it is."""
        return None if self._fresh else self._last_error

    def nodes(self) -> list[NodeInfo]:
        """Every live node, by id."""
        return [self._nodes[node_id] for node_id in sorted(self._nodes)]

    def node(self, node_id: str) -> NodeInfo | None:
        """A live node's record, or None."""
        return self._nodes.get(node_id)

    def tasks(self) -> list[TaskEntry]:
        """Every claimed task, by name."""
        return [self._tasks[name] for name in sorted(self._tasks)]

    def task(self, task_name: str) -> TaskEntry | None:
        """The claim of *task_name*, or None."""
        return self._tasks.get(task_name)

    def task_by_id(self, task_id: str) -> TaskEntry | None:
        """The claim of the task *task_id*, or None."""
        name = self._task_names_by_id.get(task_id)
        return None if name is None else self._tasks.get(name)

    async def wait_revision(self, revision: int) -> None:
        """Return once the copy reflects *revision* (e.g. a claim's ``entry.revision``);
        bound it with a cancel scope."""
        while self._revision < revision:
            await self._advanced.wait()

    # -- keeping it current -----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        """Snapshot, then follow the watch; after a break, wait ``retry_interval_s`` and
        start again. Reports started after the first snapshot attempt."""
        started = False
        while True:
            snapshot: ClusterSnapshot | None = None
            try:
                snapshot = await self._registry.snapshot()
            except SpearError as exc:
                self._stale(exc)
            else:
                self._load(snapshot)
            if not started:
                task_status.started()
                started = True
            if snapshot is not None:
                await self._follow(snapshot.revision + 1)
            await trio.sleep(self._registry.config.retry_interval_s)

    async def _follow(self, start_revision: int) -> None:
        """Apply the watch's events until it breaks or the registry loses etcd (a
        partition leaves a watch silent, not closed)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._cancel_on_loss, nursery.cancel_scope)
            try:
                async with self._registry.watch_cluster(start_revision) as events:
                    async for event in events:
                        self._apply(event)
            except SpearError as exc:
                self._stale(exc)
            nursery.cancel_scope.cancel()
        if self._fresh:
            self._stale(None)

    async def _cancel_on_loss(self, scope: trio.CancelScope) -> None:
        if self._registry.state is ClusterState.LOST:
            await self._registry.wait_state(ClusterState.CONNECTED)
        await self._registry.wait_state(ClusterState.LOST)
        scope.cancel()

    def _stale(self, error: SpearError | None) -> None:
        self._last_error = "the registry lost etcd" if error is None else error.message
        if self._fresh:
            self._fresh = False
            self._since = time.time()

    def _load(self, snapshot: ClusterSnapshot) -> None:
        self._nodes = {node.node_id: node for node in snapshot.nodes}
        self._tasks = {entry.task_name: entry for entry in snapshot.tasks}
        self._task_names_by_id = {entry.task_id: entry.task_name for entry in snapshot.tasks}
        self._fresh = True
        self._since = time.time()
        self._advance(snapshot.revision)

    def _apply(self, event: NodeEvent | TaskEvent) -> None:
        if isinstance(event, NodeEvent):
            if event.kind == "up" and event.node is not None:
                self._nodes[event.node_id] = event.node
            else:
                self._nodes.pop(event.node_id, None)
        elif event.kind == "claimed" and event.entry is not None:
            previous = self._tasks.get(event.task_name)
            if previous is not None:
                self._task_names_by_id.pop(previous.task_id, None)
            self._tasks[event.task_name] = event.entry
            self._task_names_by_id[event.entry.task_id] = event.task_name
        else:
            gone = self._tasks.pop(event.task_name, None)
            if gone is not None:
                self._task_names_by_id.pop(gone.task_id, None)
        self._advance(event.revision)

    def _advance(self, revision: int) -> None:
        if revision > self._revision:
            self._revision = revision
            self._advanced.set()
            self._advanced = trio.Event()

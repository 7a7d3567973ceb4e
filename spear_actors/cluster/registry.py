"""The cluster registry on etcd: which nodes are alive, which node owns which task name.

Keys, under the configured prefix ``P`` (values are JSON, see :mod:`.records`)::

    P nodes/<node_id>         NodeInfo      bound to the node's lease
    P tasks/name/<task_name>  TaskEntry     bound to the owner's lease
    P tasks/id/<task_id>      TaskEntry     (the same value) bound to the owner's lease

A node registers under a fresh lease and renews it three times per TTL from
:meth:`ClusterRegistry.run` (started with ``nursery.start``). When the node stops
renewing (crash, kill -9, partition) etcd deletes its record and every claim bound to
its lease once the TTL runs out: nobody else has to clean up.

Claiming a task name is one transaction: "the name and the id are free and my node
record is bound to my current lease" → write both keys under my lease. Exactly one of
several racing nodes succeeds; the others get the winner's claim back.

Losing etcd: the registry turns LOST (``status()`` says since when and why), refuses
new claims with UNAVAILABLE, queues releases, and keeps trying. If the lease survived
(a short outage, or an etcd restart, which extends leases) it carries on with it; if
the lease is gone it registers anew with a fresh lease and re-claims the names it
owned; names another node claimed meanwhile are reported in ``status().conflicts``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NoReturn

import trio

from .._nursery import background_nursery
from ..errors import ErrorCode, SpearError
from .config import ClusterConfig
from .etcd import Compare, EtcdClient, KeyValue, Op, RangeResult, WatchStream
from .events import NODES, TASK_IDS, TASK_NAMES, EventStream, KeyLayout
from .ids import validate_node_id
from .records import (
    MAX_NAME_BYTES,
    ClusterSnapshot,
    ClusterState,
    ClusterStatus,
    NodeEvent,
    NodeInfo,
    TaskClaim,
    TaskEntry,
    TaskEvent,
)

__all__ = ["ClusterRegistry", "open_registry"]

log = logging.getLogger(__name__)


def _check_name(kind: str, value: str) -> bytes:
    encoded = value.encode() if isinstance(value, str) else b""
    if not encoded or len(encoded) > MAX_NAME_BYTES or b"\0" in encoded:
        raise SpearError(
            ErrorCode.INVALID_ARGUMENT, f"{kind} must be 1-{MAX_NAME_BYTES} bytes of UTF-8 without NUL: {value!r:.80}"
        )
    return encoded


def _first(result: object) -> KeyValue | None:
    if not isinstance(result, RangeResult):
        raise SpearError(ErrorCode.PROTOCOL_ERROR, "etcd: a transaction's read answered as a write")
    return result.kvs[0] if result.kvs else None


@dataclasses.dataclass(slots=True)
class _Owned:
    """A claim this node holds, with the exact bytes stored (compared on release)."""

    entry: TaskEntry
    value: bytes


class ClusterRegistry:
    """One node's membership of the cluster: its record, its lease, its task claims.

    Start :meth:`run` with ``await nursery.start(registry.run)`` (or use
    :func:`open_registry`); the lookups work whenever etcd answers, claims only while
    the state is CONNECTED. Call :meth:`leave` for a graceful exit (the node and its
    claims disappear at once instead of after the TTL) and :meth:`aclose` at the end.
    """

    def __init__(self, config: ClusterConfig, node: NodeInfo) -> None:
        config.validate()
        validate_node_id(node.node_id)
        self.config = config
        self.node_id = node.node_id
        self._node = dataclasses.replace(node, lease=0)
        self._etcd = EtcdClient(
            config.endpoints,
            timeout_s=config.request_timeout_s,
            max_response_bytes=config.max_response_bytes,
            username=config.etcd_username,
            password=config.etcd_password,
            verify=config.tls_context() or True,
        )
        self._prefix = config.prefix.encode()
        self._keys = KeyLayout(self._prefix)
        self._state = ClusterState.CONNECTING
        self._since = time.time()
        self._last_error: str | None = None
        self._lease = 0
        self._registrations = 0
        self._owned: dict[str, _Owned] = {}
        self._pending_release: dict[str, _Owned] = {}
        self._conflicts: dict[str, TaskEntry] = {}
        self._load_dirty = False
        self._left = False
        self._changed = trio.Event()

    # -- keys -------------------------------------------------------------------------

    def _node_key(self, node_id: str) -> bytes:
        return self._prefix + NODES + node_id.encode()

    def _name_key(self, task_name: str) -> bytes:
        return self._prefix + TASK_NAMES + _check_name("task name", task_name)

    def _id_key(self, task_id: str) -> bytes:
        return self._prefix + TASK_IDS + _check_name("task id", task_id)

    # -- state ------------------------------------------------------------------------

    @property
    def state(self) -> ClusterState:
        """CONNECTING, CONNECTED or LOST (see :class:`ClusterState`)."""
        return self._state

    def status(self) -> ClusterStatus:
        """The registry's state for ``get_health``."""
        return ClusterStatus(
            node_id=self.node_id,
            state=self._state,
            since=self._since,
            lease=self._lease,
            registrations=self._registrations,
            last_error=self._last_error,
            conflicts=tuple(self._conflicts.values()),
        )

    def _set_state(self, state: ClusterState, error: str | None = None) -> None:
        if error is not None:
            self._last_error = error
        if state is self._state:
            return
        if state is ClusterState.LOST and not self._left:
            log.warning("cluster registry of %s lost etcd: %s", self.node_id, error)
        elif state is ClusterState.CONNECTED and self._state is ClusterState.LOST:
            log.warning("cluster registry of %s is back in touch with etcd", self.node_id)
        self._state = state
        self._since = time.time()
        self._changed.set()
        self._changed = trio.Event()

    def _note_failure(self, error: SpearError) -> None:
        """An etcd call failed: if etcd is unreachable, we are LOST until the run loop
        gets through again."""
        if error.code in (ErrorCode.UNAVAILABLE, ErrorCode.DEADLINE_EXCEEDED) and self._lease:
            self._set_state(ClusterState.LOST, error.message)

    async def wait_state(self, state: ClusterState) -> None:
        """Return once the registry is in *state* (bound it with a cancel scope)."""
        while self._state is not state:
            await self._changed.wait()

    def _unavailable(self, doing: str) -> SpearError:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._since))
        return SpearError(
            ErrorCode.UNAVAILABLE,
            f"cluster registry is {self._state.value} since {since}: {doing} needs etcd"
            + (f" ({self._last_error})" if self._last_error else ""),
            {"cluster_state": self._state.value, "since": self._since},
        )

    # -- the lease loop -----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        """Register, then keep the lease alive (and the load published) until cancelled.
        Reports started after the first attempt, whether or not etcd answered: a node
        serves its own tasks without etcd."""
        await self._register()
        task_status.started()
        next_renewal = trio.current_time() + self.config.keepalive_interval_s
        while True:
            if self._left:
                await trio.sleep_forever()
            if not self._lease:
                await trio.sleep(self.config.retry_interval_s)
                await self._register()
                next_renewal = trio.current_time() + self.config.keepalive_interval_s
            elif self._state is ClusterState.LOST:
                await trio.sleep(self.config.retry_interval_s)
                await self._renew()
                next_renewal = trio.current_time() + self.config.keepalive_interval_s
            else:
                tick = self.config.load_publish_interval_s or self.config.keepalive_interval_s
                await trio.sleep_until(min(next_renewal, trio.current_time() + tick))
                if trio.current_time() >= next_renewal:
                    await self._renew()
                    next_renewal = trio.current_time() + self.config.keepalive_interval_s
                if self._load_dirty and self._state is ClusterState.CONNECTED:
                    await self._publish()

    async def _register(self) -> None:
        """One attempt to join under a fresh lease and re-claim what this node owns."""
        try:
            lease = await self._etcd.lease_grant(self.config.lease_ttl_s)
        except SpearError as exc:
            self._lease = 0
            self._set_state(ClusterState.CONNECTING if not self._registrations else ClusterState.LOST, exc.message)
            return
        if self._left:
            await self._revoke(lease.id)
            return
        try:
            await self._announce(lease.id)
            self._lease = lease.id
            self._pending_release.clear()  # those keys went with the old lease
            await self._reclaim_owned()
        except SpearError as exc:
            self._lease = 0
            await self._revoke(lease.id)
            self._set_state(ClusterState.CONNECTING if not self._registrations else ClusterState.LOST, exc.message)
            return
        self._registrations += 1
        self._last_error = None
        self._set_state(ClusterState.CONNECTED)

    async def _announce(self, lease_id: int) -> None:
        """Write this node's record under *lease_id*, unless another live lease holds
        the same node id (ALREADY_EXISTS: a duplicate id, or our previous incarnation
        whose lease has not expired yet)."""
        key = self._node_key(self.node_id)
        self._load_dirty = False
        result = await self._etcd.txn(
            [Compare.create_revision(key, "EQUAL", 0)],
            [Op.put(key, self._node.to_json(), lease=lease_id)],
            [Op.get(key)],
        )
        if not result.succeeded:
            raise SpearError(
                ErrorCode.ALREADY_EXISTS,
                f"node id {self.node_id!r} is registered under another live lease (a duplicate node id, or this"
                " node's previous run whose lease has not expired yet)",
            )

    async def _publish(self) -> None:
        """Rewrite this node's record (its load changed) under the current lease."""
        lease = self._lease
        if not lease or self._left:
            return  # never a record without a lease: it would outlive the node
        self._load_dirty = False
        try:
            await self._etcd.put(self._node_key(self.node_id), self._node.to_json(), lease=lease)
        except SpearError as exc:
            self._load_dirty = True
            if exc.code is ErrorCode.NOT_FOUND:
                self._lease_gone(exc, lease)
            else:
                self._note_failure(exc)

    def _lease_gone(self, exc: SpearError, lease: int) -> None:
        """*lease* is gone from etcd; if it is still ours, we must register again."""
        if lease and lease == self._lease:
            self._lease = 0
            self._set_state(ClusterState.LOST, f"lease expired: {exc.message}")

    async def _renew(self) -> None:
        """One keepalive; back to CONNECTED if it works, a fresh registration if the
        lease is gone."""
        lease = self._lease
        try:
            await self._etcd.lease_keepalive(lease)
        except SpearError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                self._lease_gone(exc, lease)
                await self._register()
            else:
                self._set_state(ClusterState.LOST, exc.message)
            return
        if self._state is not ClusterState.CONNECTED and lease == self._lease and not self._left:
            # Same lease as before the outage: our keys are intact; catch up.
            try:
                await self._publish_and_release()
            except SpearError as exc:
                self._set_state(ClusterState.LOST, exc.message)
                return
            self._last_error = None
            self._set_state(ClusterState.CONNECTED)

    async def _publish_and_release(self) -> None:
        if not self._lease or self._left:
            return  # never a record without a lease: it would outlive the node
        await self._etcd.put(self._node_key(self.node_id), self._node.to_json(), lease=self._lease)
        self._load_dirty = False
        for name, owned in list(self._pending_release.items()):
            await self._release(name, owned)
            del self._pending_release[name]

    async def _reclaim_owned(self) -> None:
        for name, owned in list(self._owned.items()):
            try:
                claim = await self._claim(owned.entry)
            except SpearError as exc:
                if exc.code is not ErrorCode.ALREADY_EXISTS:
                    raise
                log.warning("task id of %r was claimed under another name while %s was away", name, self.node_id)
                del self._owned[name]
                continue
            if claim.won:
                self._owned[name] = _Owned(claim.entry, claim.entry.to_json())
            else:
                log.warning("task %r was claimed by %s while %s was away", name, claim.entry.owner, self.node_id)
                del self._owned[name]
                self._conflicts[name] = claim.entry

    # -- claims -----------------------------------------------------------------------

    async def claim_task(self, task_name: str, task_id: str) -> TaskClaim:
        """Claim *task_name* (with this node's *task_id*) for this node.

        ``won``: the name is ours (also when we claimed it before with this id).
        Otherwise ``entry`` is the owner's claim. ALREADY_EXISTS if *task_id* is
        claimed under another name; UNAVAILABLE unless CONNECTED.
        """
        self._name_key(task_name)
        self._id_key(task_id)
        if self._state is not ClusterState.CONNECTED:
            raise self._unavailable(f"claiming task name {task_name!r}")
        entry = TaskEntry(task_name=task_name, task_id=task_id, owner=self.node_id, claimed_at=time.time())
        try:
            claim = await self._claim(entry)
        except SpearError as exc:
            self._note_failure(exc)
            raise
        if claim.won:
            if claim.entry.lease != self._lease:
                # Our registration was replaced while the claim was in flight; the claim
                # went (or goes) with the old lease.
                raise self._unavailable(f"claiming task name {task_name!r}")
            self._owned[task_name] = _Owned(claim.entry, claim.entry.to_json())
            self._conflicts.pop(task_name, None)
        return claim

    async def _claim(self, entry: TaskEntry) -> TaskClaim:
        lease = self._lease
        name_key, id_key, node_key = (
            self._name_key(entry.task_name),
            self._id_key(entry.task_id),
            self._node_key(self.node_id),
        )
        value = entry.to_json()
        result = await self._etcd.txn(
            [
                Compare.create_revision(name_key, "EQUAL", 0),
                Compare.create_revision(id_key, "EQUAL", 0),
                Compare.lease(node_key, "EQUAL", lease),
            ],
            [Op.put(name_key, value, lease=lease), Op.put(id_key, value, lease=lease)],
            [Op.get(name_key), Op.get(id_key), Op.get(node_key)],
        )
        if result.succeeded:
            return TaskClaim(True, dataclasses.replace(entry, revision=result.revision, lease=lease))
        if len(result.responses) != 3:
            raise SpearError(ErrorCode.PROTOCOL_ERROR, "etcd: claim transaction answered with the wrong shape")
        name_kv, id_kv, node_kv = (_first(response) for response in result.responses)
        if name_kv is not None:
            existing = self._keys.parse_task(name_kv)
            if existing is None:
                raise SpearError(ErrorCode.FAILED_PRECONDITION, f"the claim of {entry.task_name!r} is unreadable")
            if existing.owner != self.node_id or existing.task_id != entry.task_id:
                return TaskClaim(False, existing)
            if existing.lease == lease:
                return TaskClaim(True, existing)  # claimed before, same lease: idempotent
            return await self._rebind(existing, name_kv)
        if id_kv is not None:
            raise SpearError(ErrorCode.ALREADY_EXISTS, f"task id {entry.task_id!r} is claimed under another name")
        if node_kv is None or node_kv.lease != lease:
            error = SpearError(ErrorCode.UNAVAILABLE, "this node's registration is gone from etcd; not claiming")
            self._lease_gone(error, lease)
            raise error
        raise SpearError(ErrorCode.INTERNAL, "claim transaction failed although every condition holds")

    async def _rebind(self, existing: TaskEntry, name_kv: KeyValue) -> TaskClaim:
        """Our own claim from an earlier lease (a registration that failed half-way):
        move it to the current lease, unless it changed meanwhile."""
        lease = self._lease
        name_key, id_key = self._name_key(existing.task_name), self._id_key(existing.task_id)
        result = await self._etcd.txn(
            [
                Compare.mod_revision(name_key, "EQUAL", name_kv.mod_revision),
                Compare.lease(self._node_key(self.node_id), "EQUAL", lease),
            ],
            [Op.put(name_key, name_kv.value, lease=lease), Op.put(id_key, name_kv.value, lease=lease)],
        )
        if not result.succeeded:
            raise SpearError(ErrorCode.UNAVAILABLE, f"the claim of {existing.task_name!r} changed meanwhile; retry")
        return TaskClaim(True, dataclasses.replace(existing, lease=lease))

    async def release_task(self, task_name: str) -> bool:
        """Give up this node's claim of *task_name* (the task was deleted). False if this
        node did not own it. Without etcd the release is queued until it returns."""
        owned = self._owned.pop(task_name, None)
        if owned is None:
            return False
        if self._state is not ClusterState.CONNECTED:
            self._pending_release[task_name] = owned
            return True
        try:
            await self._release(task_name, owned)
        except SpearError as exc:
            self._pending_release[task_name] = owned
            self._note_failure(exc)
        return True

    async def _release(self, task_name: str, owned: _Owned) -> None:
        name_key, id_key = self._name_key(task_name), self._id_key(owned.entry.task_id)
        # Only if the stored claim is still exactly ours.
        await self._etcd.txn([Compare.value(name_key, "EQUAL", owned.value)], [Op.delete(name_key), Op.delete(id_key)])

    def owned_tasks(self) -> list[TaskEntry]:
        """The claims this node holds (as far as it knows)."""
        return [owned.entry for owned in self._owned.values()]

    def owned_task(self, task_name: str) -> TaskEntry | None:
        """This node's claim of *task_name*, if it holds one (as far as it knows)."""
        owned = self._owned.get(task_name)
        return None if owned is None else owned.entry

    # -- load -------------------------------------------------------------------------

    def set_load(self, load: int, capacity: int | None = None) -> None:
        """This node's current load (and capacity); published within
        ``load_publish_interval_s`` (at the next renewal if that is 0)."""
        new_capacity = self._node.capacity if capacity is None else max(0, capacity)
        updated = dataclasses.replace(self._node, load=max(0, load), capacity=new_capacity)
        if updated != self._node:
            self._node = updated
            self._load_dirty = True

    # -- lookups ----------------------------------------------------------------------

    async def _range(self, key: bytes, *, prefix: bool = False) -> RangeResult:
        try:
            return await self._etcd.range(key, prefix=prefix)
        except SpearError as exc:
            self._note_failure(exc)
            raise

    async def get_task(self, task_name: str) -> TaskEntry | None:
        """Who owns *task_name*, or None. UNAVAILABLE without etcd."""
        result = await self._range(self._name_key(task_name))
        return self._keys.parse_task(result.kvs[0]) if result.kvs else None

    async def get_task_by_id(self, task_id: str) -> TaskEntry | None:
        """Who owns the task *task_id*, or None. UNAVAILABLE without etcd."""
        result = await self._range(self._id_key(task_id))
        return self._keys.parse_task(result.kvs[0]) if result.kvs else None

    async def list_tasks(self) -> list[TaskEntry]:
        """Every claimed task of the cluster, by name."""
        result = await self._range(self._prefix + TASK_NAMES, prefix=True)
        return [entry for kv in result.kvs if (entry := self._keys.parse_task(kv)) is not None]

    async def get_node(self, node_id: str) -> NodeInfo | None:
        """A live node's record, or None (never registered, left, or lease expired)."""
        validate_node_id(node_id)
        result = await self._range(self._node_key(node_id))
        return self._keys.parse_node(result.kvs[0]) if result.kvs else None

    async def list_nodes(self) -> list[NodeInfo]:
        """Every live node of the cluster, by id."""
        result = await self._range(self._prefix + NODES, prefix=True)
        return [node for kv in result.kvs if (node := self._keys.parse_node(kv)) is not None]

    async def snapshot(self) -> ClusterSnapshot:
        """Every live node and every claim at one revision (one read-only transaction);
        watch from ``revision + 1`` to follow on without a gap."""
        try:
            result = await self._etcd.txn(
                [], [Op.get(self._prefix + NODES, prefix=True), Op.get(self._prefix + TASK_NAMES, prefix=True)]
            )
        except SpearError as exc:
            self._note_failure(exc)
            raise
        nodes, tasks = result.responses if len(result.responses) == 2 else (None, None)
        if not isinstance(nodes, RangeResult) or not isinstance(tasks, RangeResult):
            raise SpearError(ErrorCode.PROTOCOL_ERROR, "etcd: snapshot transaction answered with the wrong shape")
        return ClusterSnapshot(
            nodes=tuple(node for kv in nodes.kvs if (node := self._keys.parse_node(kv)) is not None),
            tasks=tuple(entry for kv in tasks.kvs if (entry := self._keys.parse_task(kv)) is not None),
            revision=result.revision,
        )

    # -- watches ----------------------------------------------------------------------

    @asynccontextmanager
    async def watch_tasks(self, start_revision: int = 0) -> AsyncIterator[EventStream[TaskEvent]]:
        """Task claims and releases as they happen (``async for event in stream``);
        from *start_revision* (e.g. a listing's revision + 1) etcd replays what came
        after it first. The stream raises UNAVAILABLE when etcd goes away."""
        async with self._watch(TASK_NAMES, start_revision) as stream:
            yield EventStream(stream, self._keys.task_event, self._note_failure)

    @asynccontextmanager
    async def watch_nodes(self, start_revision: int = 0) -> AsyncIterator[EventStream[NodeEvent]]:
        """Nodes joining, updating their record, and leaving or expiring."""
        async with self._watch(NODES, start_revision) as stream:
            yield EventStream(stream, self._keys.node_event, self._note_failure)

    @asynccontextmanager
    async def watch_cluster(self, start_revision: int = 0) -> AsyncIterator[EventStream[NodeEvent | TaskEvent]]:
        """Node and task events in one stream, in etcd's order (what a cache needs)."""
        async with self._watch(b"", start_revision) as stream:
            yield EventStream(stream, self._keys.any_event, self._note_failure)

    @asynccontextmanager
    async def _watch(self, under: bytes, start_revision: int) -> AsyncIterator[WatchStream]:
        opened = False
        try:
            async with self._etcd.watch(
                self._prefix + under, prefix=True, start_revision=start_revision, prev_kv=True
            ) as stream:
                opened = True
                yield stream
        except SpearError as exc:
            if not opened:  # errors of the stream itself are noted by EventStream
                self._note_failure(exc)
            raise

    # -- the end ----------------------------------------------------------------------

    async def leave(self) -> None:
        """Leave the cluster now: revoke the lease, so this node's record and claims go
        at once (bounded by the request timeout; on failure they expire with the TTL)."""
        self._left = True
        lease, self._lease = self._lease, 0
        self._owned.clear()
        self._pending_release.clear()
        self._set_state(ClusterState.LOST, "this node left the cluster")
        if lease:
            await self._revoke(lease)

    async def _revoke(self, lease: int) -> None:
        """Revoke *lease*, bounded, even from a cancelled scope; failing is harmless
        (the lease expires with its TTL)."""
        with trio.CancelScope(shield=True), trio.move_on_after(self.config.request_timeout_s):
            try:
                await self._etcd.lease_revoke(lease)
            except SpearError as exc:
                log.info("could not revoke lease %x of %s: %s (it expires with its TTL)", lease, self.node_id, exc)

    async def aclose(self) -> None:
        """Close the connections to etcd."""
        await self._etcd.aclose()


@asynccontextmanager
async def open_registry(config: ClusterConfig, node: NodeInfo) -> AsyncIterator[ClusterRegistry]:
    """Join the cluster for the duration of the block, leave it (lease revoked) after.
    The block starts after the first registration attempt; check ``registry.state``."""
    registry = ClusterRegistry(config, node)
    try:
        async with background_nursery() as nursery:
            await nursery.start(registry.run)
            try:
                yield registry
            finally:
                await registry.leave()
    finally:
        await registry.aclose()

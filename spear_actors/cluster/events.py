"""Registry records and events decoded from etcd keys, values and watch messages.

Shared by the registry's lookups and watches and by the cluster view. What other
nodes wrote is checked on the way in (see :mod:`.records`); a value that does not parse
is logged and skipped, never trusted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from ..errors import SpearError
from .etcd import KeyValue, WatchStream
from .etcd_types import WatchEvent
from .records import NodeEvent, NodeInfo, RecordError, TaskEntry, TaskEvent

__all__ = ["NODES", "TASK_IDS", "TASK_NAMES", "EventStream", "KeyLayout"]

log = logging.getLogger(__name__)

T = TypeVar("T")

NODES = b"nodes/"
TASK_NAMES = b"tasks/name/"
TASK_IDS = b"tasks/id/"


class KeyLayout:
    """Where records live under a cluster's prefix, and how keys and values read back."""

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix

    def parse_task(self, kv: KeyValue) -> TaskEntry | None:
        """The claim stored in *kv*, or None (logged) if it is not one."""
        try:
            return TaskEntry.from_json(kv.value, revision=kv.create_revision, lease=kv.lease)
        except RecordError as exc:
            log.warning("skipping unreadable task claim %r: %s", kv.key[:200], exc)
            return None

    def parse_node(self, kv: KeyValue) -> NodeInfo | None:
        """The node record stored in *kv*, or None (logged) if it is not one."""
        try:
            return NodeInfo.from_json(kv.value, lease=kv.lease)
        except RecordError as exc:
            log.warning("skipping unreadable node record %r: %s", kv.key[:200], exc)
            return None

    def _suffix(self, key: bytes, under: bytes) -> str | None:
        head = self.prefix + under
        return key[len(head) :].decode("utf-8", "replace") if key.startswith(head) else None

    def task_event(self, event: WatchEvent) -> TaskEvent | None:
        """A change of a ``tasks/name/`` key as a TaskEvent (None for any other key)."""
        name = self._suffix(event.kv.key, TASK_NAMES)
        if name is None:
            return None
        if event.type == "PUT":
            entry = self.parse_task(event.kv)
            return None if entry is None else TaskEvent("claimed", name, entry, event.kv.mod_revision)
        previous = None if event.prev_kv is None else self.parse_task(event.prev_kv)
        return TaskEvent("released", name, previous, event.kv.mod_revision)

    def node_event(self, event: WatchEvent) -> NodeEvent | None:
        """A change of a ``nodes/`` key as a NodeEvent (None for any other key)."""
        node_id = self._suffix(event.kv.key, NODES)
        if node_id is None:
            return None
        if event.type == "PUT":
            node = self.parse_node(event.kv)
            return None if node is None else NodeEvent("up", node_id, node, event.kv.mod_revision)
        previous = None if event.prev_kv is None else self.parse_node(event.prev_kv)
        return NodeEvent("down", node_id, previous, event.kv.mod_revision)

    def any_event(self, event: WatchEvent) -> NodeEvent | TaskEvent | None:
        """A node or task event (None for the ``tasks/id/`` twin keys and strangers)."""
        return self.node_event(event) or self.task_event(event)


class EventStream(Generic[T]):
    """Registry events decoded from one etcd watch (records that do not parse are skipped)."""

    def __init__(
        self,
        stream: WatchStream,
        decode: Callable[[WatchEvent], T | None],
        on_error: Callable[[SpearError], None],
    ) -> None:
        self._stream = stream
        self._decode = decode
        self._on_error = on_error
        self._ready: Iterator[T] = iter(())

    @property
    def revision(self) -> int:
        """The etcd revision of the last message seen."""
        return self._stream.revision

    def __aiter__(self) -> EventStream[T]:
        return self

    async def __anext__(self) -> T:
        while True:
            for item in self._ready:
                return item
            try:
                response = await self._stream.__anext__()
            except SpearError as exc:
                self._on_error(exc)
                raise
            decoded = [self._decode(event) for event in response.events]
            self._ready = iter([item for item in decoded if item is not None])

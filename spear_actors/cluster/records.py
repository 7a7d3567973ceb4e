"""What the registry stores in etcd (JSON values, readable with ``etcdctl get``) and
what it hands back: node records, task claims, events and the registry's own state.

Records read from etcd come from other nodes: they are bounded in size and checked
field by field; a record that does not parse is skipped by listings, never trusted.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any, Literal

from .ids import NODE_ID_PATTERN

__all__ = [
    "MAX_RECORD_BYTES",
    "ClusterSnapshot",
    "ClusterState",
    "ClusterStatus",
    "NodeEvent",
    "NodeInfo",
    "TaskClaim",
    "TaskEntry",
    "TaskEvent",
]

MAX_RECORD_BYTES = 64 * 1024
"""Largest value the registry writes or accepts for one node or task record."""
MAX_NAME_BYTES = 512
"""Longest task name or task id (UTF-8 bytes) the registry keys by."""
_MAX_ENDPOINTS = 16
_MAX_TEXT = 512


class RecordError(ValueError):
    """A stored value is not a valid record."""


def _text(raw: dict[str, Any], key: str, *, limit: int = _MAX_TEXT) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or len(value) > limit:
        raise RecordError(f"{key}: expected a string of at most {limit} characters")
    return value


def _number(raw: dict[str, Any], key: str) -> float:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(f"{key}: expected a number")
    return float(value)


def _count(raw: dict[str, Any], key: str) -> int:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RecordError(f"{key}: expected a non-negative integer")
    return value


def _load_json(value: bytes) -> dict[str, Any]:
    if len(value) > MAX_RECORD_BYTES:
        raise RecordError(f"record of {len(value)} bytes exceeds {MAX_RECORD_BYTES}")
    try:
        raw = json.loads(value)
    except ValueError as exc:
        raise RecordError(f"not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise RecordError("not a JSON object")
    return raw


def _node_id(raw: dict[str, Any], key: str) -> str:
    value = _text(raw, key, limit=63)
    if NODE_ID_PATTERN.fullmatch(value) is None:
        raise RecordError(f"{key}: not a valid node id")
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node as the cluster sees it: where to reach it and how busy it is.

    ``capacity`` is how many executions it takes at once, ``load`` how many it runs
    now; ``lease`` is filled in when read back from etcd (0 in what a node announces).
    """

    node_id: str
    endpoints: tuple[str, ...] = ()
    version: str = ""
    capacity: int = 0
    load: int = 0
    started_at: float = 0.0
    lease: int = 0

    @property
    def utilisation(self) -> float:
        """load / capacity (a node without capacity counts as full)."""
        return self.load / self.capacity if self.capacity > 0 else float("inf")

    def to_json(self) -> bytes:
        """The stored value (``lease`` is etcd's, not part of it): :meth:`to_dict` as JSON."""
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, value: bytes, *, lease: int = 0) -> NodeInfo:
        """Parse and check a stored node record (RecordError if it is not one)."""
        raw = _load_json(value)
        endpoints = raw.get("endpoints")
        if not isinstance(endpoints, list) or len(endpoints) > _MAX_ENDPOINTS:
            raise RecordError(f"endpoints: expected a list of at most {_MAX_ENDPOINTS}")
        if not all(isinstance(e, str) and len(e) <= _MAX_TEXT for e in endpoints):
            raise RecordError("endpoints: expected strings")
        return cls(
            node_id=_node_id(raw, "node_id"),
            endpoints=tuple(endpoints),
            version=_text(raw, "version", limit=64),
            capacity=_count(raw, "capacity"),
            load=_count(raw, "load"),
            started_at=_number(raw, "started_at"),
            lease=lease,
        )

    def to_dict(self) -> dict[str, Any]:
        """A plain map (for get_health, listings and the CLI)."""
        return {
            "node_id": self.node_id,
            "endpoints": list(self.endpoints),
            "version": self.version,
            "capacity": self.capacity,
            "load": self.load,
            "started_at": self.started_at,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class TaskEntry:
    """A task name's claim: its id and owner node. ``revision`` (the claim's etcd
    create revision) and ``lease`` (the owner's lease) are filled in when read back."""

    task_name: str
    task_id: str
    owner: str
    claimed_at: float
    revision: int = 0
    lease: int = 0

    def to_json(self) -> bytes:
        """The stored value: :meth:`to_dict` as JSON."""
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, value: bytes, *, revision: int = 0, lease: int = 0) -> TaskEntry:
        """Parse and check a stored claim (RecordError if it is not one)."""
        raw = _load_json(value)
        return cls(
            task_name=_text(raw, "task_name", limit=MAX_NAME_BYTES),
            task_id=_text(raw, "task_id", limit=MAX_NAME_BYTES),
            owner=_node_id(raw, "owner"),
            claimed_at=_number(raw, "claimed_at"),
            revision=revision,
            lease=lease,
        )

    def to_dict(self) -> dict[str, Any]:
        """A plain map (for listings and the CLI)."""
        return {
            "task_name": self.task_name,
            "task_id": self.task_id,
            "owner": self.owner,
            "claimed_at": self.claimed_at,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class TaskClaim:
    """The outcome of claiming a name: ``won`` and this node owns ``entry``, or the name
    belongs to ``entry.owner`` already (``entry`` is that claim)."""

    won: bool
    entry: TaskEntry


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """Every live node and every task claim, read at one etcd revision."""

    nodes: tuple[NodeInfo, ...]
    tasks: tuple[TaskEntry, ...]
    revision: int


@dataclasses.dataclass(frozen=True, slots=True)
class TaskEvent:
    """A change in the cluster's task table: a name was claimed or released (released
    also when the owner's lease expired). ``entry`` is None only for a release whose
    previous value etcd no longer had."""

    kind: Literal["claimed", "released"]
    task_name: str
    entry: TaskEntry | None
    revision: int


@dataclasses.dataclass(frozen=True, slots=True)
class NodeEvent:
    """A node joined or updated its record (``"up"``) or left / expired (``"down"``)."""

    kind: Literal["up", "down"]
    node_id: str
    node: NodeInfo | None
    revision: int


class ClusterState(enum.StrEnum):
    """Whether the registry is in touch with etcd."""

    CONNECTING = "connecting"
    """Not registered yet (the first attempt is under way or failed)."""
    CONNECTED = "connected"
    """Registered, lease alive: claims are accepted."""
    LOST = "lost"
    """etcd unreachable or our lease gone: local tasks keep running, new names are refused."""


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterStatus:
    """The registry's state for ``get_health``."""

    node_id: str
    state: ClusterState
    since: float
    """Wall-clock time (Unix seconds) of the last state change."""
    lease: int
    registrations: int
    """How many times this node registered (each time with a fresh lease)."""
    last_error: str | None
    conflicts: tuple[TaskEntry, ...]
    """Names this node owned and lost while away from etcd: another node claimed them
    (each entry is the winner's claim); the lead of the node decides what to do."""

    def to_dict(self) -> dict[str, Any]:
        """A plain map for ``get_health``."""
        out: dict[str, Any] = {
            "node_id": self.node_id,
            "state": self.state.value,
            "since": self.since,
            "lease": f"{self.lease:x}" if self.lease else None,
            "registrations": self.registrations,
        }
        if self.last_error:
            out["last_error"] = self.last_error
        if self.conflicts:
            out["conflicts"] = [entry.to_dict() for entry in self.conflicts]
        return out

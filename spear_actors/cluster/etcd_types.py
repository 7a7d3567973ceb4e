"""Typed requests and results of etcd's v3 JSON gateway, and their (de)serialisation.

The gateway speaks the protobuf messages of etcd's gRPC API as JSON: byte fields are
base64, 64-bit integers are decimal strings, and fields at their zero value are left
out (``succeeded: false`` never appears). Everything here is pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ErrorCode, SpearError

__all__ = [
    "Compare",
    "DeleteResult",
    "KeyValue",
    "Lease",
    "Op",
    "PutResult",
    "RangeResult",
    "TxnResult",
    "WatchEvent",
    "WatchResponse",
    "b64",
    "parse_int",
    "prefix_range_end",
    "to_bytes",
]

Key = bytes | str


def to_bytes(key: Key) -> bytes:
    """A key or value as bytes (a ``str`` is UTF-8)."""
    return key.encode() if isinstance(key, str) else key


def b64(data: bytes) -> str:
    """The base64 text the gateway wants for a bytes field."""
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object) -> bytes:
    if value is None:
        return b""
    if not isinstance(value, str):
        raise _malformed(f"expected a base64 string, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _malformed(f"bad base64: {exc}") from None


def parse_int(value: object) -> int:
    """A 64-bit integer field: a decimal string (or a number), absent = 0."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise _malformed("expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            raise _malformed(f"expected an integer, got {value[:40]!r}") from None
    raise _malformed(f"expected an integer, got {type(value).__name__}")


def _map(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _malformed(f"expected an object, got {type(value).__name__}")
    return value


def _list(value: object) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _malformed(f"expected a list, got {type(value).__name__}")
    return value


def _malformed(message: str) -> SpearError:
    return SpearError(ErrorCode.PROTOCOL_ERROR, f"malformed etcd gateway answer: {message}")


def prefix_range_end(prefix: bytes) -> bytes:
    """The ``range_end`` that makes a range cover every key starting with *prefix*
    (etcd's own rule: increment the last byte that is not 0xff; ``b"\\0"`` = to the end)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def _revision(body: dict[str, Any]) -> int:
    return parse_int(_map(body.get("header")).get("revision"))


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as stored: its value, the lease it is bound to (0 = none) and revisions."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_json(cls, raw: object) -> KeyValue:
        """Parse one ``mvccpb.KeyValue`` from the gateway's JSON."""
        body = _map(raw)
        return cls(
            key=_unb64(body.get("key")),
            value=_unb64(body.get("value")),
            create_revision=parse_int(body.get("create_revision")),
            mod_revision=parse_int(body.get("mod_revision")),
            version=parse_int(body.get("version")),
            lease=parse_int(body.get("lease")),
        )


@dataclass(frozen=True, slots=True)
class RangeResult:
    """The answer to a range: the keys (at most ``limit``), how many matched in all,
    whether more exist past the limit, and the store's revision at the read."""

    kvs: list[KeyValue]
    count: int
    more: bool
    revision: int

    @classmethod
    def from_json(cls, raw: object) -> RangeResult:
        """Parse a ``RangeResponse``."""
        body = _map(raw)
        return cls(
            kvs=[KeyValue.from_json(kv) for kv in _list(body.get("kvs"))],
            count=parse_int(body.get("count")),
            more=bool(body.get("more", False)),
            revision=_revision(body),
        )


@dataclass(frozen=True, slots=True)
class PutResult:
    """The answer to a put: the new revision and, when asked for, the previous key."""

    revision: int
    prev_kv: KeyValue | None

    @classmethod
    def from_json(cls, raw: object) -> PutResult:
        """Parse a ``PutResponse``."""
        body = _map(raw)
        prev = body.get("prev_kv")
        return cls(revision=_revision(body), prev_kv=None if prev is None else KeyValue.from_json(prev))


@dataclass(frozen=True, slots=True)
class DeleteResult:
    """The answer to a delete: how many keys went and, when asked for, what they were."""

    deleted: int
    prev_kvs: list[KeyValue]
    revision: int

    @classmethod
    def from_json(cls, raw: object) -> DeleteResult:
        """Parse a ``DeleteRangeResponse``."""
        body = _map(raw)
        return cls(
            deleted=parse_int(body.get("deleted")),
            prev_kvs=[KeyValue.from_json(kv) for kv in _list(body.get("prev_kvs"))],
            revision=_revision(body),
        )


@dataclass(frozen=True, slots=True)
class TxnResult:
    """The answer to a transaction: which branch ran and each of its operations' results."""

    succeeded: bool
    responses: list[RangeResult | PutResult | DeleteResult]
    revision: int

    @classmethod
    def from_json(cls, raw: object) -> TxnResult:
        """Parse a ``TxnResponse``."""
        body = _map(raw)
        responses: list[RangeResult | PutResult | DeleteResult] = []
        for item in _list(body.get("responses")):
            item = _map(item)
            if "response_range" in item:
                responses.append(RangeResult.from_json(item["response_range"]))
            elif "response_put" in item:
                responses.append(PutResult.from_json(item["response_put"]))
            elif "response_delete_range" in item:
                responses.append(DeleteResult.from_json(item["response_delete_range"]))
            else:
                raise _malformed(f"unknown transaction response {sorted(item)[:3]}")
        return cls(succeeded=bool(body.get("succeeded", False)), responses=responses, revision=_revision(body))


@dataclass(frozen=True, slots=True)
class Lease:
    """A granted lease: its id and its TTL in whole seconds."""

    id: int
    ttl: int


CompareTarget = Literal["VERSION", "CREATE", "MOD", "VALUE", "LEASE"]
CompareResult = Literal["EQUAL", "GREATER", "LESS", "NOT_EQUAL"]
_TARGET_FIELD: dict[str, str] = {
    "VERSION": "version",
    "CREATE": "create_revision",
    "MOD": "mod_revision",
    "VALUE": "value",
    "LEASE": "lease",
}


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a transaction: *target* of *key* compared with *operand*.

    Build with the class methods, e.g. ``Compare.create_revision(key, "EQUAL", 0)``
    (the key does not exist) or ``Compare.value(key, "EQUAL", b"...")``.
    """

    key: bytes
    target: CompareTarget
    result: CompareResult
    operand: int | bytes

    @classmethod
    def version(cls, key: Key, result: CompareResult, version: int) -> Compare:
        """Compare the key's version (number of writes since creation; 0 = absent)."""
        return cls(to_bytes(key), "VERSION", result, version)

    @classmethod
    def create_revision(cls, key: Key, result: CompareResult, revision: int) -> Compare:
        """Compare the revision that created the key (0 = the key does not exist)."""
        return cls(to_bytes(key), "CREATE", result, revision)

    @classmethod
    def mod_revision(cls, key: Key, result: CompareResult, revision: int) -> Compare:
        """Compare the revision of the key's last write."""
        return cls(to_bytes(key), "MOD", result, revision)

    @classmethod
    def value(cls, key: Key, result: CompareResult, value: bytes) -> Compare:
        """Compare the key's value."""
        return cls(to_bytes(key), "VALUE", result, value)

    @classmethod
    def lease(cls, key: Key, result: CompareResult, lease_id: int) -> Compare:
        """Compare the lease the key is bound to (0 = none)."""
        return cls(to_bytes(key), "LEASE", result, lease_id)

    def to_json(self) -> dict[str, Any]:
        """The ``Compare`` message as the gateway wants it."""
        operand: str = b64(self.operand) if isinstance(self.operand, bytes) else str(self.operand)
        return {"key": b64(self.key), "target": self.target, "result": self.result, _TARGET_FIELD[self.target]: operand}


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of a transaction branch (``Op.put``, ``Op.get``, ``Op.delete``)."""

    kind: Literal["request_put", "request_range", "request_delete_range"]
    body: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def put(cls, key: Key, value: bytes, *, lease: int = 0, prev_kv: bool = False) -> Op:
        """Write *value* at *key*, bound to *lease* when non-zero."""
        body: dict[str, Any] = {"key": b64(to_bytes(key)), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        if prev_kv:
            body["prev_kv"] = True
        return cls("request_put", body)

    @classmethod
    def get(cls, key: Key, *, prefix: bool = False, limit: int = 0) -> Op:
        """Read *key* (or every key under it with ``prefix=True``)."""
        return cls("request_range", range_body(to_bytes(key), prefix=prefix, limit=limit))

    @classmethod
    def delete(cls, key: Key, *, prefix: bool = False, prev_kv: bool = False) -> Op:
        """Delete *key* (or every key under it with ``prefix=True``)."""
        body = range_body(to_bytes(key), prefix=prefix)
        if prev_kv:
            body["prev_kv"] = True
        return cls("request_delete_range", body)

    def to_json(self) -> dict[str, Any]:
        """The ``RequestOp`` message as the gateway wants it."""
        return {self.kind: self.body}


def range_body(key: bytes, *, prefix: bool = False, limit: int = 0, revision: int = 0) -> dict[str, Any]:
    """The key/range_end part shared by range, delete and watch requests."""
    if prefix:
        # etcd refuses an empty key; "\0" up to "\0" is its spelling of "every key"
        body: dict[str, Any] = {"key": b64(key or b"\0"), "range_end": b64(prefix_range_end(key))}
    else:
        body = {"key": b64(key)}
    if limit:
        body["limit"] = str(limit)
    if revision:
        body["revision"] = str(revision)
    return body


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change seen by a watch: a PUT (``kv`` is the new key) or a DELETE (``kv``
    holds the key and the deleting revision; ``prev_kv`` the old value when asked for)."""

    type: Literal["PUT", "DELETE"]
    kv: KeyValue
    prev_kv: KeyValue | None

    @classmethod
    def from_json(cls, raw: object) -> WatchEvent:
        """Parse one ``mvccpb.Event``."""
        body = _map(raw)
        kind = body.get("type", "PUT")
        if kind not in ("PUT", "DELETE"):
            raise _malformed(f"unknown watch event type {str(kind)[:20]!r}")
        prev = body.get("prev_kv")
        return cls(
            type=kind, kv=KeyValue.from_json(body.get("kv")), prev_kv=None if prev is None else KeyValue.from_json(prev)
        )


@dataclass(frozen=True, slots=True)
class WatchResponse:
    """One message of a watch stream: a batch of events at ``revision``."""

    events: list[WatchEvent]
    revision: int
    created: bool
    canceled: bool
    compact_revision: int
    cancel_reason: str

    @classmethod
    def from_json(cls, raw: object) -> WatchResponse:
        """Parse a ``WatchResponse``."""
        body = _map(raw)
        return cls(
            events=[WatchEvent.from_json(event) for event in _list(body.get("events"))],
            revision=_revision(body),
            created=bool(body.get("created", False)),
            canceled=bool(body.get("canceled", False)),
            compact_revision=parse_int(body.get("compact_revision")),
            cancel_reason=str(body.get("cancel_reason", ""))[:200],
        )

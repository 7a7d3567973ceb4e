"""The data model of the FunctionService API (names follow spear's).

Requests arrive as plain maps (msgpack or JSON); :meth:`InvokeRequest.from_dict`
checks every field's type and :meth:`InvokeRequest.validate` applies spear's
invocation rules. Every defect is a :class:`SpearError` INVALID_ARGUMENT naming
the field.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from typing import Any, TypeVar

from .errors import ErrorCode, SpearError

__all__ = [
    "ArtifactSpec",
    "ExecutionContext",
    "ExecutionMode",
    "ExecutionStatus",
    "InstancePolicy",
    "InstanceStatus",
    "InvocationType",
    "InvokeRequest",
    "TaskStatus",
    "build_invoke_request",
]


class InvocationType(enum.StrEnum):
    """Whether an invocation creates (or reuses by name) a task, or names one by id."""

    NEW_TASK = "NEW_TASK"
    EXISTING_TASK = "EXISTING_TASK"


class ExecutionMode(enum.StrEnum):
    """How the caller receives the result."""

    SYNC = "SYNC"
    ASYNC = "ASYNC"
    STREAM = "STREAM"


class ExecutionStatus(enum.StrEnum):
    """Lifecycle of one execution; the last four are terminal."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"

    @property
    def terminal(self) -> bool:
        """True for COMPLETED, FAILED, CANCELLED and TIMEOUT."""
        return self not in (ExecutionStatus.PENDING, ExecutionStatus.RUNNING)


class InstanceStatus(enum.StrEnum):
    """Lifecycle of one instance: CREATING → READY ⇄ RUNNING → TERMINATING → TERMINATED | FAILED."""

    CREATING = "CREATING"
    READY = "READY"
    RUNNING = "RUNNING"
    TERMINATING = "TERMINATING"
    TERMINATED = "TERMINATED"
    FAILED = "FAILED"


class TaskStatus(enum.StrEnum):
    """ACTIVE serves calls; DEGRADED is backing off after failed starts; DELETING is going away."""

    ACTIVE = "ACTIVE"
    DEGRADED = "DEGRADED"
    DELETING = "DELETING"


def _invalid(message: str) -> SpearError:
    return SpearError(ErrorCode.INVALID_ARGUMENT, message)


_T = TypeVar("_T")


def _field(data: Mapping[str, Any], name: str, kind: type[_T], default: _T, where: str) -> _T:
    value = data.get(name)
    if value is None:
        return default
    if kind is float and type(value) is int:
        return float(value)  # type: ignore[return-value]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _invalid(f"{where}{name} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _section(data: object, where: str) -> Mapping[str, Any]:
    """*data* as a map, or INVALID_ARGUMENT naming the section (``where``)."""
    if not isinstance(data, Mapping):
        raise _invalid(f"{where.rstrip('.')} must be a map")
    return data


def _str_map(data: Mapping[str, Any], name: str, where: str) -> dict[str, str]:
    value = _field(data, name, dict, {}, where)
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise _invalid(f"{where}{name} must map strings to strings")
    return dict(value)


def _enum(data: Mapping[str, Any], name: str, kind: type[enum.StrEnum], default: str, where: str) -> Any:
    raw = _field(data, name, str, default, where).upper()
    for prefix in ("INVOCATION_TYPE_", "EXECUTION_MODE_"):
        raw = raw.removeprefix(prefix)
    try:
        return kind(raw)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise _invalid(f"{where}{name} {raw!r} is not one of {allowed}") from None


@dataclasses.dataclass(slots=True)
class ArtifactSpec:
    """What code a task runs and how (``config`` holds runtime settings)."""

    artifact_id: str = ""
    artifact_type: str = "process"
    location: str = ""
    version: str = ""
    checksum: str = ""
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    content: bytes | None = None
    """Inline artifact bytes (small WASM modules), instead of a location."""

    @classmethod
    def from_dict(cls, data: object, where: str = "artifact_spec.") -> ArtifactSpec:
        """Build from a map, checking every field's type."""
        data = _section(data, where)
        spec = cls(
            artifact_id=_field(data, "artifact_id", str, "", where),
            artifact_type=_field(data, "artifact_type", str, "process", where).lower(),
            location=_field(data, "location", str, "", where),
            version=_field(data, "version", str, "", where),
            checksum=_field(data, "checksum", str, "", where).lower(),
            metadata=dict(_field(data, "metadata", dict, {}, where)),
            config=dict(_field(data, "config", dict, {}, where)),
            content=_field(data, "content", bytes, None, where),
        )
        if not spec.location and spec.content is None and spec.artifact_type != "external":
            # (an external task's code runs elsewhere: its location only describes it)
            raise _invalid(f"{where}location is required (or inline content)")
        return spec

    def to_dict(self) -> dict[str, Any]:
        """The spec as a plain map (inline content is summarised, not repeated)."""
        out: dict[str, Any] = {
            "artifact_id": self.artifact_id,
            "artifact_type": self.artifact_type,
            "location": self.location,
            "version": self.version,
            "checksum": self.checksum,
            "metadata": self.metadata,
            "config": self.config,
        }
        if self.content is not None:
            out["content_bytes"] = len(self.content)
        return out


SCHEDULING_POLICIES = ("least_loaded", "round_robin")


_MAX_INSTANCES = 100_000
_MAX_CONCURRENCY = 100_000
_MAX_PENDING = 10_000_000
_MAX_IDLE_S = 365 * 86400.0


@dataclasses.dataclass(slots=True)
class InstancePolicy:
    """How many instances a task runs and how they are used. None = the node's default."""

    min_instances: int | None = None
    max_instances: int | None = None
    max_concurrency: int | None = None
    idle_timeout_s: float | None = None
    max_pending: int | None = None
    scheduling: str | None = None
    """``least_loaded`` (default) or ``round_robin``."""

    @classmethod
    def from_dict(cls, data: object, where: str = "policy.") -> InstancePolicy:
        """Build from a map, checking types and bounds."""
        if data is None:
            return cls()
        data = _section(data, where)
        policy = cls(
            min_instances=_field(data, "min_instances", int, None, where),
            max_instances=_field(data, "max_instances", int, None, where),
            max_concurrency=_field(data, "max_concurrency", int, None, where),
            idle_timeout_s=_field(data, "idle_timeout_s", float, None, where),
            max_pending=_field(data, "max_pending", int, None, where),
            scheduling=_field(data, "scheduling", str, None, where),
        )
        if policy.scheduling is not None and policy.scheduling not in SCHEDULING_POLICIES:
            raise _invalid(f"{where}scheduling must be one of {', '.join(SCHEDULING_POLICIES)}")
        for name, low, high in (
            ("min_instances", 0, _MAX_INSTANCES),
            ("max_pending", 0, _MAX_PENDING),
            ("max_instances", 1, _MAX_INSTANCES),
            ("max_concurrency", 1, _MAX_CONCURRENCY),
        ):
            value = getattr(policy, name)
            if value is not None and not low <= value <= high:
                raise _invalid(f"{where}{name} must be >= {low} and <= {high}, got {value!r}")
        idle = policy.idle_timeout_s
        if idle is not None and (not math.isfinite(idle) or not 0 < idle <= _MAX_IDLE_S):
            raise _invalid(
                f"{where}idle_timeout_s must be a finite number of seconds in (0, {_MAX_IDLE_S:g}], got {idle!r}"
            )
        if (
            policy.min_instances is not None
            and policy.max_instances is not None
            and policy.min_instances > policy.max_instances
        ):
            raise _invalid(f"{where}min_instances exceeds max_instances")
        return policy

    def merged_over(self, base: InstancePolicy) -> InstancePolicy:
        """This policy with its unset fields taken from *base*."""
        return InstancePolicy(
            *(
                mine if mine is not None else theirs
                for mine, theirs in zip(dataclasses.astuple(self), dataclasses.astuple(base), strict=True)
            )
        )


@dataclasses.dataclass(slots=True)
class ExecutionContext:
    """Per-call settings (spear's ExecutionContext)."""

    execution_id: str = ""
    session_id: str = ""
    timeout_ms: int = 0
    """0 means the node's default timeout."""
    max_retries: int = 0
    environment: dict[str, str] = dataclasses.field(default_factory=dict)
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: object, where: str = "context.") -> ExecutionContext:
        """Build from a map, checking every field's type."""
        if data is None:
            return cls()
        data = _section(data, where)
        context = cls(
            execution_id=_field(data, "execution_id", str, "", where),
            session_id=_field(data, "session_id", str, "", where),
            timeout_ms=_field(data, "timeout_ms", int, 0, where),
            max_retries=_field(data, "max_retries", int, 0, where),
            environment=_str_map(data, "environment", where),
            headers=_str_map(data, "headers", where),
        )
        if context.timeout_ms < 0:
            raise _invalid(f"{where}timeout_ms must be >= 0")
        if context.max_retries < 0:
            raise _invalid(f"{where}max_retries must be >= 0")
        return context


@dataclasses.dataclass(slots=True)
class InvokeRequest:
    """spear's InvokeFunctionRequest."""

    invocation_type: InvocationType = InvocationType.NEW_TASK
    task_name: str = ""
    task_description: str = ""
    artifact_spec: ArtifactSpec | None = None
    task_id: str = ""
    function_name: str = ""
    parameters: Any = None
    execution_mode: ExecutionMode = ExecutionMode.SYNC
    context: ExecutionContext = dataclasses.field(default_factory=ExecutionContext)
    create_if_not_exists: bool = False
    force_new_instance: bool = False
    invocation_metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    policy: InstancePolicy = dataclasses.field(default_factory=InstancePolicy)
    """Instance policy for a task this call creates (ignored for an existing task)."""

    @classmethod
    def from_dict(cls, data: object) -> InvokeRequest:
        """Build from a map, checking every field's type (not yet the invocation rules)."""
        if not isinstance(data, Mapping):
            raise _invalid("invoke request must be a map")
        spec = data.get("artifact_spec")
        return cls(
            invocation_type=_enum(data, "invocation_type", InvocationType, "NEW_TASK", ""),
            task_name=_field(data, "task_name", str, "", ""),
            task_description=_field(data, "task_description", str, "", ""),
            artifact_spec=None if spec is None else ArtifactSpec.from_dict(spec),
            task_id=_field(data, "task_id", str, "", ""),
            function_name=_field(data, "function_name", str, "", ""),
            parameters=data.get("parameters"),
            execution_mode=_enum(data, "execution_mode", ExecutionMode, "SYNC", ""),
            context=ExecutionContext.from_dict(data.get("context")),
            create_if_not_exists=_field(data, "create_if_not_exists", bool, False, ""),
            force_new_instance=_field(data, "force_new_instance", bool, False, ""),
            invocation_metadata=_str_map(data, "invocation_metadata", ""),
            policy=InstancePolicy.from_dict(data.get("policy")),
        )

    def validate(self) -> None:
        """Apply spear's invocation rules; raise INVALID_ARGUMENT naming the rule broken.

        One rule is applied later, by the manager: NEW_TASK needs ``artifact_spec``
        only when no task of that name exists yet (so a declared task can be
        invoked by name alone).
        """
        if self.invocation_type is InvocationType.NEW_TASK:
            if not self.task_name:
                raise _invalid("task_name is required for new task creation")
        elif not self.task_id:
            raise _invalid("task_id is required for existing task invocation")
        if not self.function_name:
            raise _invalid("function_name is required")


def build_invoke_request(function_name: str, parameters: Any, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The request map for an invocation given as keyword *fields* (the
    InvokeFunctionRequest field names). ``invocation_type`` defaults to
    EXISTING_TASK when only ``task_id`` names the task, else NEW_TASK."""
    request = dict(fields)
    request["function_name"] = function_name
    request["parameters"] = parameters
    if "invocation_type" not in request:
        by_id = bool(request.get("task_id")) and not request.get("task_name")
        request["invocation_type"] = (InvocationType.EXISTING_TASK if by_id else InvocationType.NEW_TASK).value
    spec = request.get("artifact_spec")
    if isinstance(spec, ArtifactSpec):
        wire = spec.to_dict()
        wire.pop("content_bytes", None)
        if spec.content is not None:
            wire["content"] = spec.content
        request["artifact_spec"] = wire
    return request

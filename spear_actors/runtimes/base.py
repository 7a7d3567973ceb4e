"""The interface every runtime implements: create / start / execute / stop / health.

The instance actor knows runtimes only through this module. A runtime turns an
:class:`InstanceSpec` into a running :class:`RuntimeInstance` inside an async
context manager: entering starts it and returns once it is READY; leaving stops it
and releases everything it held (processes, stores, threads), whatever happened.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import trio

from ..errors import ErrorCode, SpearError
from ..model import ArtifactSpec, InstancePolicy

__all__ = [
    "Call",
    "EndSink",
    "InstanceSpec",
    "LogSink",
    "RelayedExecution",
    "RelayingInstance",
    "Runtime",
    "RuntimeInstance",
    "StreamSink",
    "deadline_error",
]

StreamSink = Callable[[Any], Awaitable[None]]
"""Receives the items of a streaming call in order; awaiting it is the backpressure."""

LogSink = Callable[[str], None]
"""Receives log lines the function wrote during one execution."""

EndSink = Callable[[Any, SpearError | None], None]
"""Receives the end of a relayed execution, once: ``(result, None)`` or
``(None, error)`` with the errors :meth:`RuntimeInstance.execute` would raise."""


@dataclasses.dataclass(frozen=True, slots=True)
class InstanceSpec:
    """Everything a runtime needs to start one instance of a task."""

    instance_id: str
    task_id: str
    task_name: str
    artifact: ArtifactSpec
    artifact_path: Path | None
    """The artifact's bytes on local disk (a file, or a directory for unpacked archives);
    None when the artifact is inline (``artifact.content``) or has no location."""
    artifact_digest: str = ""
    """sha256 hex of the artifact's content, when known (a cache key for runtimes)."""

    @property
    def config(self) -> dict[str, Any]:
        """The artifact's runtime settings (``artifact_spec.config``)."""
        return self.artifact.config


@dataclasses.dataclass(frozen=True, slots=True)
class Call:
    """One execution sent to an instance."""

    execution_id: str
    function_name: str
    params: Any = None
    timeout: float | None = None
    """Seconds the function may run; the runtime enforces it (DEADLINE_EXCEEDED)."""
    stream: bool = False
    """True for STREAM mode: items go to the sink, the return value is the final result."""
    environment: dict[str, str] = dataclasses.field(default_factory=dict)
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


class RuntimeInstance(abc.ABC):
    """A running instance. Methods are called from trio tasks of the instance actor."""

    instance_id: str

    @abc.abstractmethod
    async def execute(self, call: Call, sink: StreamSink | None, log: LogSink) -> Any:
        """Run *call* and return its result.

        Raises :class:`SpearError`: FUNCTION_ERROR (the function failed; details
        carry type/traceback), DEADLINE_EXCEEDED (``call.timeout`` passed),
        RESOURCE_EXHAUSTED (a runtime limit), INSTANCE_FAILED (the instance died).
        When the calling trio task is cancelled, the execution is cancelled inside
        the instance too (the agent's handler, or the WASM module by epoch).
        """

    @abc.abstractmethod
    async def wait_failed(self) -> SpearError:
        """Return (never raise) once the instance has died on its own: process exit,
        missed heartbeats, a lost connection. Blocks forever while it is healthy."""

    def describe(self) -> dict[str, Any]:
        """Runtime-specific facts for status output (pid, module digest, ...)."""
        return {}


def deadline_error(call: Call) -> SpearError:
    """The error of an execution whose ``call.timeout`` passed (whoever saw it pass)."""
    return SpearError(ErrorCode.DEADLINE_EXCEEDED, f"{call.function_name} did not finish before its deadline")


class RelayedExecution(Protocol):
    """A unary execution started by :meth:`RelayingInstance.relay_execute`."""

    def give_up(self, reason: str) -> None:
        """Stop it (the agent is told why); its end is not reported."""

    async def cancel(self, reason: str) -> None:
        """Cancel it as a cancelled :meth:`RuntimeInstance.execute` is: returns once
        the instance confirmed (the end is then reported, and is ignored by a caller
        that answered already), once the request was taken back unsent, or once the
        instance failed to confirm in time (then the instance is failed and the end
        is not reported)."""


@runtime_checkable
class RelayingInstance(Protocol):
    """An instance that runs unary executions with no trio task waiting for each:
    the end is delivered by a callback from the task that reads it (an agent's
    connection). The instance actor then spends no task, no task switch and no
    cancel scope per call; streams still use :meth:`RuntimeInstance.execute`."""

    def can_relay(self) -> bool:
        """False once the instance is known to have failed: a call not sent yet is
        better run elsewhere than failed here."""

    async def relay_execute(self, call: Call, log: LogSink, on_end: EndSink) -> RelayedExecution | None:
        """Start *call*; *log* gets its log lines and *on_end* its end, called once
        (maybe before this returns). Waits only for room to send. None: there is
        nothing to stop (the end is reported when the instance's failure is known)."""


class Runtime(abc.ABC):
    """A kind of instance (``kind`` matches ``artifact_spec.artifact_type``)."""

    kind: str

    needs_artifact: bool = True
    """Whether a task's artifact is resolved (fetched, verified, pinned) when it is
    created; False for runtimes whose code lives elsewhere (external agents)."""
    policy_defaults: InstancePolicy = InstancePolicy()
    """Instance policy defaults of this runtime's tasks, between the task's own
    policy and the node's ``[defaults]``."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background service of the runtime (listeners, tickers), run by the node for
        its whole life; ``task_status.started()`` once instances may be created.
        The default has nothing to run."""
        task_status.started()
        await trio.sleep_forever()

    @abc.abstractmethod
    def open_instance(self, spec: InstanceSpec) -> AbstractAsyncContextManager[RuntimeInstance]:
        """Start an instance; the context is READY on entry and fully stopped on exit.

        Entry raises :class:`SpearError` INSTANCE_FAILED (with details such as
        ``stderr_tail``) when the instance cannot start, or INVALID_ARGUMENT when the
        spec is unusable for this runtime.
        """

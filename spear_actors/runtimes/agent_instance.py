"""An instance served by an agent over one connection, wherever the agent runs.

Executions are ``execute`` requests on the connection; a lost connection, a missed
heartbeat or an unconfirmed cancel is the instance's failure. The process runtime
adds the agent process it spawned (:class:`~.process.ProcessInstance`); the external
runtime has only the connection of an agent started elsewhere
(:class:`~.external.ExternalInstance`).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import trio

from ..errors import ErrorCode, SpearError
from ..metrics.events import events
from ..protocol.connection import Connection
from .base import Call, LogSink, RuntimeInstance, StreamSink
from .output import capped_log
from .sandbox import Sandbox

__all__ = ["AgentInstance"]

log = logging.getLogger(__name__)


class AgentInstance(RuntimeInstance):
    """The connection side of an agent instance: executions, failure, log caps."""

    kind: ClassVar[str] = "process"
    """The runtime's name in metrics."""

    def __init__(
        self, instance_id: str, cancel_grace: float, sandbox: Sandbox | None = None, *, task_id: str = ""
    ) -> None:
        self.instance_id = instance_id
        self.task_id = task_id
        self._events = events()
        self._stopping = False
        """Set once the node stops this instance: an end after that is no failure."""
        self.sandbox = sandbox or Sandbox()
        self.cancel_grace = cancel_grace
        self._connection: Connection | None = None
        self._failed = trio.Event()
        self._failure: SpearError | None = None

    def _failure_details(self) -> dict[str, Any]:
        """What a failure's error carries besides its message."""
        return {}

    def _attach(self, connection: Connection) -> None:
        self._connection = connection
        connection.on_unconfirmed_cancel = self._ignored_cancel

    def _ignored_cancel(self, method: str, request_id: int) -> None:
        # An agent that does not confirm a cancel may be stuck for good: replace it.
        self._fail(
            f"agent did not confirm the cancel of request {request_id} within {self.cancel_grace:g}s",
            "cancel_unconfirmed",
        )

    def _fail(self, reason: str, kind: str) -> None:
        """The instance failed (*kind*: a fixed word for the metrics)."""
        if self._failure is None:
            self._failure = SpearError(ErrorCode.INSTANCE_FAILED, reason, self._failure_details())
            self._failed.set()
            if not self._stopping and self._connection is not None:
                if self._events is not None:
                    self._events.instance_failed(self.kind, self.task_id, kind)
                log.info(
                    "instance %s failed: %s",
                    self.instance_id,
                    reason,
                    extra={"instance_id": self.instance_id, "task_id": self.task_id},
                )

    async def _watch_connection(self) -> None:
        assert self._connection is not None
        await self._connection.wait_closed()
        reason = self._connection.close_reason
        self._fail(f"agent connection lost: {reason.message if reason else 'closed'}", "connection_lost")

    async def execute(self, call: Call, sink: StreamSink | None, log: LogSink) -> Any:
        connection = self._connection
        assert connection is not None
        params = {
            "function": call.function_name,
            "params": call.params,
            "execution_id": call.execution_id,
            "environment": call.environment,
            "headers": call.headers,
        }
        try:
            if sink is None:
                envelope = await connection.request(
                    "execute", params, timeout=call.timeout, cancel_grace=self.cancel_grace
                )
            else:
                async with connection.stream(
                    "execute", params, timeout=call.timeout, cancel_grace=self.cancel_grace
                ) as items:
                    async for item in items:
                        await sink(item)
                    envelope = items.result
        except SpearError as exc:
            if exc.code is ErrorCode.DEADLINE_EXCEEDED:
                raise SpearError(
                    ErrorCode.DEADLINE_EXCEEDED,
                    f"{call.function_name} did not finish before its deadline",
                ) from None
            if exc.code is ErrorCode.UNAVAILABLE:
                await self._failed.wait()
                assert self._failure is not None
                raise SpearError(
                    ErrorCode.INSTANCE_FAILED, self._failure.message, dict(self._failure.details)
                ) from None
            if "logs" in exc.details:  # the error's copy of the logs is capped as well
                kept = self._log_lines(exc.details["logs"], log)
                raise SpearError(exc.code, exc.message, {**exc.details, "logs": kept}) from None
            raise
        if not isinstance(envelope, dict):
            raise SpearError(ErrorCode.PROTOCOL_ERROR, "agent answered execute without a result envelope")
        self._log_lines(envelope.get("logs"), log)
        return envelope.get("value")

    def _log_lines(self, lines: object, log: LogSink) -> list[str]:
        """Hand the agent's log lines for one execution to *log*, capped; return them."""
        if not isinstance(lines, list):
            return []
        kept = list(capped_log(lines, self.sandbox.max_line_bytes, self.sandbox.max_execution_log_bytes))
        for line in kept:
            log(line)
        return kept

    async def wait_failed(self) -> SpearError:
        await self._failed.wait()
        assert self._failure is not None
        return self._failure

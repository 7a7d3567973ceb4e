"""An instance served by an agent over one connection, wherever the agent runs.

Executions are ``execute`` requests on the connection; a lost connection, a missed
heartbeat or an unconfirmed cancel is the instance's failure. The process runtime
adds the agent process it spawned (:class:`~.process.ProcessInstance`); the external
runtime has only the connection of an agent started elsewhere
(:class:`~.external.ExternalInstance`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ClassVar

import trio

from ..errors import ErrorCode, SpearError
from ..metrics.events import events
from ..protocol.calling import RelayedCall
from ..protocol.connection import Connection
from .base import Call, EndSink, LogSink, RuntimeInstance, StreamSink, deadline_error
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
        self._on_failure: list[Callable[[SpearError], None]] = []
        """Relayed executions whose connection was lost before the failure was known."""

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
            waiting, self._on_failure = self._on_failure, []
            for on_failure in waiting:
                on_failure(self._lost_error())
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

    def _execute_params(self, call: Call) -> dict[str, Any]:
        return {
            "function": call.function_name,
            "params": call.params,
            "execution_id": call.execution_id,
            "environment": call.environment,
            "headers": call.headers,
        }

    async def execute(self, call: Call, sink: StreamSink | None, log: LogSink) -> Any:
        connection = self._connection
        assert connection is not None
        params = self._execute_params(call)
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
            if exc.code is ErrorCode.UNAVAILABLE:
                await self._failed.wait()
                raise self._lost_error() from None
            raise self._execution_error(call, exc, log) from None
        return self._envelope_value(envelope, log)

    def can_relay(self) -> bool:
        """:class:`~.base.RelayingInstance`: the connection is up and nothing failed."""
        connection = self._connection
        return self._failure is None and connection is not None and not connection.closed

    async def relay_execute(self, call: Call, log: LogSink, on_end: EndSink) -> RelayedCall | None:
        """:class:`~.base.RelayingInstance`: the ``execute`` request relayed on the
        agent's connection; its reader delivers the end."""
        connection = self._connection
        assert connection is not None

        def on_answer(envelope: Any, error: SpearError | None) -> None:
            if error is None:
                try:
                    value = self._envelope_value(envelope, log)
                except SpearError as exc:
                    on_end(None, exc)
                else:
                    on_end(value, None)
            elif error.code is ErrorCode.UNAVAILABLE:
                self._when_failed(on_end)
            else:
                on_end(None, self._execution_error(call, error, log))

        try:
            return await connection.relay(
                "execute", self._execute_params(call), on_answer, timeout=call.timeout, cancel_grace=self.cancel_grace
            )
        except SpearError as exc:
            if exc.code is not ErrorCode.UNAVAILABLE:
                raise
            self._when_failed(on_end)
            return None

    def _when_failed(self, on_end: EndSink) -> None:
        """End a call whose connection was lost with the instance's failure, once
        known (the connection's end is seen first; the process's exit may say more)."""
        if self._failure is not None:
            on_end(None, self._lost_error())
        else:
            self._on_failure.append(lambda error: on_end(None, error))

    def _lost_error(self) -> SpearError:
        assert self._failure is not None
        return SpearError(ErrorCode.INSTANCE_FAILED, self._failure.message, dict(self._failure.details))

    def _execution_error(self, call: Call, exc: SpearError, log: LogSink) -> SpearError:
        """The error of an execution the agent (or the deadline) ended with *exc*."""
        if exc.code is ErrorCode.DEADLINE_EXCEEDED:
            return deadline_error(call)
        if "logs" in exc.details:  # the error's copy of the logs is capped as well
            kept = self._log_lines(exc.details["logs"], log)
            return SpearError(exc.code, exc.message, {**exc.details, "logs": kept})
        return exc

    def _envelope_value(self, envelope: Any, log: LogSink) -> Any:
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

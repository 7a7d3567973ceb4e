"""The client library for services talking to a node.

::

    async with spear_actors.connect("ws://127.0.0.1:7411") as client:
        response = await client.invoke("add", [1, 2], task_name="calc",
                                       artifact_spec={"location": "/srv/calc_agent.py"})
        print(response["result"])
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from .model import build_invoke_request
from .protocol.calls import ResponseStream
from .protocol.connection import Connection, ConnectionConfig
from .protocol.handshake import open_connection
from .protocol.messages import Hello
from .protocol.transports import open_transport

__all__ = ["Client", "connect"]


class Client:
    """A connection to a node, with one method per node method."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    async def call(self, method: str, params: Any = None, *, timeout: float | None = None) -> Any:
        """Call any node method by name (see docs/protocol.md)."""
        return await self.connection.request(method, params, timeout=timeout)

    async def invoke(self, function_name: str, parameters: Any = None, **fields: Any) -> dict[str, Any]:
        """Invoke a function; *fields* are InvokeFunctionRequest fields (task_name,
        task_id, artifact_spec, context, ...). Returns the response map, raises
        :class:`~spear_actors.errors.SpearError` (with ``.code``) on failure."""
        result: dict[str, Any] = await self.call("invoke", build_invoke_request(function_name, parameters, fields))
        return result

    @asynccontextmanager
    async def stream(
        self, function_name: str, parameters: Any = None, *, window: int = 16, **fields: Any
    ) -> AsyncIterator[ResponseStream]:
        """Invoke a streaming function (``stream_function``); iterate the yielded
        stream for its items in order. After the last item ``.result`` holds the
        final response; an error after some items is raised after them. At most
        *window* items are in flight, so a slow consumer slows the function.
        Leaving the block early cancels the execution."""
        request = build_invoke_request(function_name, parameters, fields)
        async with self.connection.stream("stream_function", request, window=window) as items:
            yield items

    async def get_execution(
        self, execution_id: str, include_result: bool = True, include_logs: bool = False
    ) -> dict[str, Any]:
        """An execution record (NOT_FOUND when unknown or evicted)."""
        return await self._map(
            "get_execution", execution_id=execution_id, include_result=include_result, include_logs=include_logs
        )

    async def wait_execution(
        self, execution_id: str, timeout: float | None = None, include_logs: bool = False
    ) -> dict[str, Any]:
        """Wait (server side, no polling) until the execution finishes or *timeout*
        seconds pass; returns the record, whose status says which."""
        timeout_ms = None if timeout is None else max(0, round(timeout * 1000))
        return await self._map(
            "wait_execution", execution_id=execution_id, timeout_ms=timeout_ms, include_logs=include_logs
        )

    @asynccontextmanager
    async def watch_executions(self, execution_ids: list[str]) -> AsyncIterator[ResponseStream]:
        """Completion notices: yields each execution's record as it finishes."""
        async with self.connection.stream(
            "watch_executions", {"execution_ids": execution_ids}, window=max(1, len(execution_ids))
        ) as items:
            yield items

    async def cancel_execution(
        self, execution_id: str, reason: str = "cancelled by client", force: bool = False
    ) -> dict[str, Any]:
        """Cancel an execution; returns its record once it has ended."""
        return await self._map("cancel_execution", execution_id=execution_id, reason=reason, force=force)

    async def list_executions(
        self, task_id: str = "", status_filter: list[str] | None = None, limit: int = 100, start_after: str = ""
    ) -> dict[str, Any]:
        """A page of execution records (oldest first)."""
        return await self._map(
            "list_executions", task_id=task_id, status_filter=status_filter, limit=limit, start_after=start_after
        )

    async def list_tasks(self, prefix: str = "", limit: int = 100, start_after: str = "") -> dict[str, Any]:
        """A page of tasks sorted by name."""
        return await self._map("list_tasks", prefix=prefix, limit=limit, start_after=start_after)

    async def get_task(
        self, task_id: str, include_executions: bool = False, execution_limit: int = 20
    ) -> dict[str, Any]:
        """One task: policy, instances, optionally recent executions."""
        return await self._map(
            "get_task", task_id=task_id, include_executions=include_executions, execution_limit=execution_limit
        )

    async def delete_task(self, task_id: str, force: bool = False) -> dict[str, Any]:
        """Delete a task (FAILED_PRECONDITION when busy and not forced)."""
        return await self._map("delete_task", task_id=task_id, force=force)

    async def get_health(self) -> dict[str, Any]:
        """The node's health summary."""
        return await self._map("get_health")

    health = get_health

    async def get_stats(self) -> dict[str, Any]:
        """Per node and per task statistics."""
        return await self._map("get_stats")

    async def _map(self, method: str, **params: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(method, {k: v for k, v in params.items() if v is not None})
        return result


@asynccontextmanager
async def connect(
    url: str,
    token: str | None = None,
    *,
    connect_timeout: float = 10.0,
    config: ConnectionConfig | None = None,
) -> AsyncIterator[Client]:
    """Connect to a node at ``ws://host:port``, ``tcp://host:port`` or ``unix:///path``.

    Raises :class:`~spear_actors.errors.SpearError` UNAVAILABLE if the node cannot be
    reached and UNAUTHENTICATED if it refuses the token.
    """
    async with (
        open_transport(url, connect_timeout=connect_timeout) as transport,
        open_connection(transport, Hello(role="client", auth=token), config=config) as connection,
    ):
        yield Client(connection)

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
from .protocol.connection import Connection, ConnectionConfig, open_connection
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

    async def health(self) -> dict[str, Any]:
        """The node's health summary."""
        result: dict[str, Any] = await self.call("health")
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

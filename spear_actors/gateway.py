"""Gateway: serves the node's methods to client services over the protocol."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from .errors import ErrorCode, SpearError
from .model import InvokeRequest
from .protocol.connection import ConnectionConfig, IncomingRequest, accept_connection, token_authenticator
from .protocol.messages import Welcome
from .protocol.transports import Endpoint, Transport, serve_endpoint

if TYPE_CHECKING:
    from .node import Node

__all__ = ["METHODS", "Gateway"]

log = logging.getLogger(__name__)

Method = Callable[["Node", IncomingRequest], Awaitable[Any]]


def _params(incoming: IncomingRequest) -> dict[str, Any]:
    params = incoming.params if incoming.params is not None else {}
    if not isinstance(params, dict):
        raise SpearError(ErrorCode.INVALID_ARGUMENT, f"{incoming.method}: params must be a map")
    return params


async def _invoke(node: Node, incoming: IncomingRequest) -> Any:
    return await node.invoke_request(InvokeRequest.from_dict(_params(incoming)))


async def _health(node: Node, incoming: IncomingRequest) -> Any:
    return await node.health()


METHODS: dict[str, Method] = {
    "invoke": _invoke,
    "health": _health,
}
"""Method name → implementation; docs/protocol.md lists each with its params."""


class Gateway:
    """Accepts client connections on one endpoint and serves :data:`METHODS`."""

    def __init__(self, node: Node) -> None:
        self.node = node
        config = node.config
        self._authenticator = token_authenticator(config.token) if config.token else None
        self._connection_config = ConnectionConfig(
            heartbeat_interval=config.client_heartbeat_interval_s,
            heartbeat_timeout=config.client_heartbeat_timeout_s,
        )

    async def serve(self, url: str, *, task_status: trio.TaskStatus[Endpoint] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on *url* until cancelled."""
        await serve_endpoint(url, self._serve_client, task_status=task_status)

    async def _serve_client(self, transport: Transport) -> None:
        try:
            async with accept_connection(
                transport,
                authenticator=self._authenticator,
                config=self._connection_config,
                handler=self._handle,
                welcome=Welcome(role="node", peer_id=self.node.config.node_id, meta={"methods": sorted(METHODS)}),
            ) as connection:
                await connection.wait_closed()
        except SpearError as exc:
            log.info("client on %s refused or lost: %s", transport.description, exc)

    async def _handle(self, incoming: IncomingRequest) -> Any:
        method = METHODS.get(incoming.method)
        if method is None:
            raise SpearError(ErrorCode.NOT_FOUND, f"no such method: {incoming.method!r}")
        return await method(self.node, incoming)

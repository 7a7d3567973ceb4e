"""Gateway: serves the node's methods to client services over the protocol."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from .errors import ErrorCode, SpearError
from .model import InvokeRequest
from .protocol.calls import IncomingRequest
from .protocol.connection import ConnectionConfig
from .protocol.handshake import accept_connection, token_authenticator
from .protocol.messages import Welcome
from .protocol.transports import Endpoint, Transport, serve_endpoint

if TYPE_CHECKING:
    from .node import Node

__all__ = ["METHODS", "Gateway"]

log = logging.getLogger(__name__)

Method = Callable[["Node", IncomingRequest], Awaitable[Any]]


_UNSET: Any = object()


def _args(incoming: IncomingRequest, **spec: tuple[type | tuple[type, ...], Any]) -> dict[str, Any]:
    """Check *incoming*'s params against *spec* (name → (type, default); a default
    of _UNSET means required) and return them, defaults filled in."""
    params = incoming.params if incoming.params is not None else {}
    if not isinstance(params, dict):
        raise SpearError(ErrorCode.INVALID_ARGUMENT, f"{incoming.method}: params must be a map")
    unknown = set(params) - set(spec)
    if unknown:
        raise SpearError(ErrorCode.INVALID_ARGUMENT, f"{incoming.method}: unknown params {sorted(map(str, unknown))}")
    out = {}
    for name, (kind, default) in spec.items():
        value = params.get(name, default)
        if value is _UNSET:
            raise SpearError(ErrorCode.INVALID_ARGUMENT, f"{incoming.method}: {name} is required")
        if value is not default and (not isinstance(value, kind) or (isinstance(value, bool) and kind is int)):
            raise SpearError(ErrorCode.INVALID_ARGUMENT, f"{incoming.method}: {name} has the wrong type")
        out[name] = value
    return out


def _request(incoming: IncomingRequest) -> InvokeRequest:
    return InvokeRequest.from_dict(incoming.params if incoming.params is not None else {})


async def _invoke(node: Node, incoming: IncomingRequest) -> Any:
    return await node.invoke_request(_request(incoming))


async def _stream_function(node: Node, incoming: IncomingRequest) -> Any:
    if not incoming.is_stream:
        raise SpearError(ErrorCode.INVALID_ARGUMENT, "stream_function must be called as a stream request (window)")
    return await node.invoke_request(_request(incoming), incoming.send_item)


async def _get_execution(node: Node, incoming: IncomingRequest) -> Any:
    return await node.get_execution(
        **_args(incoming, execution_id=(str, _UNSET), include_result=(bool, True), include_logs=(bool, False))
    )


async def _wait_execution(node: Node, incoming: IncomingRequest) -> Any:
    args = _args(incoming, execution_id=(str, _UNSET), timeout_ms=(int, None), include_logs=(bool, False))
    timeout_ms = args.pop("timeout_ms")
    return await node.wait_execution(**args, timeout=None if timeout_ms is None else timeout_ms / 1000)


async def _watch_executions(node: Node, incoming: IncomingRequest) -> Any:
    ids = _args(incoming, execution_ids=(list, _UNSET))["execution_ids"]
    if not incoming.is_stream or not all(isinstance(i, str) for i in ids):
        raise SpearError(ErrorCode.INVALID_ARGUMENT, "watch_executions: a stream request with a list of ids")
    send, receive = trio.open_memory_channel[dict[str, Any]](len(ids) or 1)

    async def wait_one(execution_id: str) -> None:
        try:
            record = await node.wait_execution(execution_id)
        except SpearError as exc:
            record = {"execution_id": execution_id, "error": exc.to_dict()}
        send.send_nowait(record)

    async with trio.open_nursery() as nursery:
        for execution_id in ids:
            nursery.start_soon(wait_one, execution_id)
        for _ in ids:
            await incoming.send_item(await receive.receive())
    return {"count": len(ids)}


async def _cancel_execution(node: Node, incoming: IncomingRequest) -> Any:
    return await node.cancel_execution(
        **_args(incoming, execution_id=(str, _UNSET), reason=(str, "cancelled by client"), force=(bool, False))
    )


async def _list_tasks(node: Node, incoming: IncomingRequest) -> Any:
    return await node.list_tasks(**_args(incoming, prefix=(str, ""), limit=(int, 100), start_after=(str, "")))


async def _get_task(node: Node, incoming: IncomingRequest) -> Any:
    return await node.get_task(
        **_args(incoming, task_id=(str, _UNSET), include_executions=(bool, False), execution_limit=(int, 20))
    )


async def _delete_task(node: Node, incoming: IncomingRequest) -> Any:
    return await node.delete_task(**_args(incoming, task_id=(str, _UNSET), force=(bool, False)))


async def _list_executions(node: Node, incoming: IncomingRequest) -> Any:
    return await node.list_executions(
        **_args(incoming, task_id=(str, ""), status_filter=(list, None), limit=(int, 100), start_after=(str, ""))
    )


async def _get_health(node: Node, incoming: IncomingRequest) -> Any:
    _args(incoming)
    return await node.get_health()


async def _get_stats(node: Node, incoming: IncomingRequest) -> Any:
    _args(incoming)
    return await node.get_stats()


METHODS: dict[str, Method] = {
    "invoke": _invoke,
    "stream_function": _stream_function,
    "get_execution": _get_execution,
    "wait_execution": _wait_execution,
    "watch_executions": _watch_executions,
    "cancel_execution": _cancel_execution,
    "list_tasks": _list_tasks,
    "get_task": _get_task,
    "delete_task": _delete_task,
    "list_executions": _list_executions,
    "get_health": _get_health,
    "health": _get_health,
    "get_stats": _get_stats,
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

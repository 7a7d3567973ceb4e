"""The gateway: the node's network front end for client services.

It listens on the configured endpoints, authenticates each connection's hello, and
serves the methods of :data:`spear_actors.api.METHODS` by calling the node. It knows
the node only through those methods' names (``Method.node_method``).
"""

from __future__ import annotations

import functools
import logging
import resource
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import trio

from ..api import BY_NAME, Method, validate_params
from ..cluster.routing import NOT_ROUTED, ClusterRouter, peer_or_client_authenticator
from ..errors import ErrorCode, SpearError
from ..model import ExecutionMode, InvokeRequest
from ..protocol.calls import IncomingRequest
from ..protocol.connection import Connection, ConnectionConfig
from ..protocol.handshake import accept_connection, token_authenticator
from ..protocol.messages import Error, Welcome
from ..protocol.serving import Deferred
from ..protocol.transports import Endpoint, Transport, parse_endpoint
from .bytecount import ByteCounts
from .exposure import AuthThrottle
from .isolation import isolated_connection, isolated_request
from .listeners import listen
from .refusals import RefusalLog

if TYPE_CHECKING:
    from ..node import Node

__all__ = ["Gateway", "descriptor_budget"]

log = logging.getLogger("spear_actors.gateway")

_DRAIN_RETRY_MS: Final = 1000
_CLOSE_WAIT: Final = 2.0
"""How long closing connections may take (each says goodbye and flushes first)."""


def descriptor_budget(max_connections: int, reserve: int) -> int:
    """How many client connections fit beside *reserve* descriptors kept for agents,
    artifacts and the node itself: the soft RLIMIT_NOFILE is first raised to the hard
    one (up to 1,048,576), then the connections get what is left, at most
    *max_connections* and at least 1."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1_048_576
    wanted = min(wanted, 1_048_576)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    available = max_connections if soft == resource.RLIM_INFINITY else soft - reserve
    return max(1, min(max_connections, available))


class Gateway:
    """Serves the node's methods on a set of endpoints; one per node (``open_node``
    starts it for ``NodeConfig.listen``)."""

    def __init__(self, node: Node, methods: Mapping[str, Method] = BY_NAME) -> None:
        self.node = node
        config = node.config
        self._methods = methods
        self._authenticator = token_authenticator(config.token) if config.token else None
        if self._authenticator is not None and config.cluster is not None and config.cluster.token:
            self._authenticator = peer_or_client_authenticator(config.token or "", config.cluster.token)
        self.router: ClusterRouter | None = None
        """Set when the node is in a cluster: calls owned elsewhere are forwarded."""
        self._connection_config = ConnectionConfig(
            heartbeat_interval=config.client_heartbeat_interval_s,
            heartbeat_timeout=config.client_heartbeat_timeout_s,
        )
        self.max_connections = descriptor_budget(config.max_connections, config.connection_fd_reserve)
        """Connections served at once (the configured maximum, lowered to fit the
        descriptor limit minus the reserve)."""
        if self.max_connections < config.max_connections:
            log.warning(
                "serving at most %d client connections (max_connections %d does not fit the descriptor "
                "limit minus connection_fd_reserve %d)",
                self.max_connections,
                config.max_connections,
                config.connection_fd_reserve,
            )
        self.refusals = RefusalLog()
        self.byte_counts = ByteCounts()
        """Bytes in and out per TCP listener (for metrics)."""
        self.connections_by_listener: dict[str, int] = {}
        """Open client connections per listener endpoint (for metrics)."""
        self._auth_throttle = AuthThrottle(config.max_auth_failures, config.auth_failure_window_s, self.refusals)
        self.endpoints: list[Endpoint] = []
        self.draining = False
        self._connections = 0
        self._by_address: dict[str, int] = {}
        self._open: set[Connection] = set()
        self._calls = 0
        self._no_calls: trio.Event | None = None  # made by a drain that waits for calls to end
        self._accepting = trio.CancelScope()
        self._closing = trio.Event()
        self._welcome = Welcome(role="node", peer_id=config.node_id, meta={"methods": sorted(methods)})

    # -- lifecycle -------------------------------------------------------------------
    async def run(self, urls: list[str], *, task_status: trio.TaskStatus[list[Endpoint]]) -> None:
        """Listen on *urls* until cancelled or closed; ``task_status`` gets the bound
        endpoints (real ports for port 0)."""
        secure = [url for url in urls if parse_endpoint(url).scheme in ("tls", "wss")]
        ssl_context = self.node.config.tls.server_context() if secure else None
        async with trio.open_nursery() as connections:
            with self._accepting:
                async with trio.open_nursery() as listeners:
                    for url in urls:
                        endpoint = await listeners.start(
                            functools.partial(
                                listen,
                                url,
                                serve=self._serve_transport,
                                admission=self,
                                refusals=self.refusals,
                                connections=connections,
                                ssl_context=ssl_context if url in secure else None,
                                byte_counts=self.byte_counts,
                            )
                        )
                        self.endpoints.append(endpoint)
                        log.info("node %s listening on %s", self.node.config.node_id, endpoint)
                    task_status.started(list(self.endpoints))
            await self._closing.wait()
            connections.cancel_scope.cancel()

    def stop_accepting(self) -> None:
        """Drain, step 1: close the listening sockets and answer new invocations
        UNAVAILABLE; open connections and their calls carry on."""
        self.draining = True
        self._accepting.cancel()

    async def close(self, deadline: float) -> None:
        """Drain, step 2: wait until no call is being served (or *deadline*), then say
        goodbye on every connection and close it."""
        with trio.move_on_at(deadline):
            if self._calls:
                self._no_calls = trio.Event()
                await self._no_calls.wait()
        await trio.lowlevel.checkpoint()  # answers of calls that just ended are queued
        with trio.move_on_after(_CLOSE_WAIT):
            async with trio.open_nursery() as nursery:
                for connection in list(self._open):
                    nursery.start_soon(connection.aclose, "node is shutting down")
        self._closing.set()

    # -- connections -----------------------------------------------------------------
    def admit(self, address: str) -> Error | None:
        """A socket from *address* was accepted: count it, or the error to refuse it
        with when the node serves ``max_connections`` already, or that address
        ``max_connections_per_address`` (see :class:`.listeners.Admission`)."""
        if self._connections >= self.max_connections:
            self.refusals.refused("too many connections", f"limit {self.max_connections}")
            return _too_many(f"node has too many client connections (limit {self.max_connections}); retry later")
        from_address = self._by_address.get(address, 0)
        if from_address >= self.node.config.max_connections_per_address and address != "local":
            self.refusals.refused("too many connections from one address", f"{address!r}")
            return _too_many(
                f"too many connections from this address (limit {self.node.config.max_connections_per_address})"
            )
        self._connections += 1
        self._by_address[address] = from_address + 1
        return None

    def release(self, address: str) -> None:
        """An admitted connection from *address* has ended."""
        self._connections -= 1
        left = self._by_address[address] - 1
        if left:
            self._by_address[address] = left
        else:
            del self._by_address[address]

    async def _serve_transport(self, transport: Transport, peer_address: str) -> None:
        listener = transport.description.split(" (", 1)[0]
        self.connections_by_listener[listener] = self.connections_by_listener.get(listener, 0) + 1
        try:
            await isolated_connection(
                transport.description,
                functools.partial(self._converse, transport, peer_address),
                functools.partial(self._connection_ended, transport.description),
            )
        finally:
            self.connections_by_listener[listener] -= 1
            with trio.CancelScope(shield=True):
                await transport.aclose()

    def _connection_ended(self, description: str, error: SpearError) -> None:
        """A connection ended with a coded error: a link that went away is routine
        (debug); anything else (no hello in time, a protocol error) is a refusal,
        logged at most once per kind per interval (the throttle logs refused tokens)."""
        if error.code is ErrorCode.UNAVAILABLE:
            log.debug("client %s: connection ended: %s", description, error, extra={"peer": description})
        elif error.code is not ErrorCode.UNAUTHENTICATED:
            # the message may carry what the peer sent: repr, so it cannot forge a log line
            self.refusals.refused(f"connection ended {error.code.value}", f"{description}: {error.message!r}")

    async def _converse(self, transport: Transport, peer_address: str) -> None:
        authenticator = self._authenticator
        if authenticator is not None:
            authenticator = self._auth_throttle.wrap(authenticator, peer_address)
        async with accept_connection(
            transport,
            authenticator=authenticator,
            config=self._connection_config,
            handler=self._handle,
            welcome=self._welcome,
        ) as connection:
            self._open.add(connection)
            try:
                await connection.wait_closed()
            finally:
                self._open.discard(connection)

    # -- requests --------------------------------------------------------------------
    async def _handle(self, incoming: IncomingRequest) -> Any:
        method = self._methods.get(incoming.method)
        if method is None:
            raise SpearError(ErrorCode.NOT_FOUND, f"no such method: {incoming.method!r}")
        if method.stream and not incoming.is_stream:
            raise SpearError(ErrorCode.INVALID_ARGUMENT, f"{method.name} must be called as a stream request (window)")
        if self.draining and method.refused_while_draining:
            raise SpearError(
                ErrorCode.UNAVAILABLE,
                "node is draining (shutting down): retry on another node or after it restarts",
                {"retry_after_ms": _DRAIN_RETRY_MS},
            )
        self._calls += 1
        result: Any = None
        try:
            result = await isolated_request(
                incoming.method,
                functools.partial(self._call, method, incoming),
                functools.partial(_request_context, incoming),
            )
            return result
        finally:
            if type(result) is Deferred:  # relayed: the call ends with its answer (drain waits)
                result.add_done_callback(self._call_ended)
            else:
                self._call_ended()

    def _call_ended(self) -> None:
        self._calls -= 1
        if self._calls == 0 and self._no_calls is not None:
            self._no_calls.set()

    async def _call(self, method: Method, incoming: IncomingRequest) -> Any:
        serve = getattr(self.node, method.node_method)
        if method.params is None:  # an InvokeFunctionRequest
            if self.router is not None:  # it reads the request only as far as routing needs
                return await self.router.invoke(method, incoming)
            request = InvokeRequest.from_dict(incoming.params if incoming.params is not None else {})
            if method.stream:
                return await serve(request, incoming.send_item)
            if request.execution_mode is ExecutionMode.SYNC:  # answered with no task waiting
                return await self.node.invoke_deferred(request, incoming.defer())
            return await serve(request)
        args = validate_params(method, incoming.params)
        if self.router is not None:
            routed = await self.router.call(method, args, incoming)
            if routed is not NOT_ROUTED:
                return routed
        if method.stream:
            args["sink"] = incoming.send_item
        return await serve(**args)


def _request_context(incoming: IncomingRequest) -> dict[str, object]:
    """What a log line about *incoming* names: method, request id, peer."""
    return {"method": incoming.method, "request_id": incoming.id, "peer": incoming.connection.transport.description}


def _too_many(message: str) -> Error:
    return Error(None, ErrorCode.RESOURCE_EXHAUSTED.value, message, {"retry_after_ms": _DRAIN_RETRY_MS})

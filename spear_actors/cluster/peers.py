"""Node-to-node connections: one pooled spear connection per peer node.

A node forwards calls for tasks and executions owned elsewhere over these (see
:mod:`.routing`). Each connection says hello as ``role="node"`` with the cluster
token, so the owner serves the call itself instead of routing it again.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from .._nursery import background_nursery
from ..errors import ErrorCode, SpearError
from ..protocol.connection import Connection, ConnectionConfig
from ..protocol.handshake import open_connection
from ..protocol.messages import Hello
from ..protocol.transports import open_transport
from .records import NodeInfo

__all__ = ["PeerPool", "open_peer_pool", "peer_url"]

log = logging.getLogger(__name__)

_PREFERRED = ("tcp://", "tls://", "ws://", "wss://")
"""Raw sockets first: the node-to-node hop is cheapest without websocket framing."""

_PEER_CONFIG = ConnectionConfig(callers_read=False)
"""The reader task reads every answer: a relaying node's caller reading its own
(the fast path of a client making one call at a time) costs it more CPU in
hand-overs than it saves (measured: docs/performance.md, "Cluster routing")."""


def peer_url(node: NodeInfo) -> str | None:
    """The endpoint of *node* to dial: its first tcp:// or tls:// one, else ws:// or
    wss:// (never a unix socket: another machine cannot reach it)."""
    for scheme in _PREFERRED:
        for endpoint in node.endpoints:
            if endpoint.startswith(scheme):
                return endpoint
    return None


class _Dial:
    """A dial under way: callers wait for it; it ends with a connection or an error."""

    __slots__ = ("connection", "done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.connection: Connection | None = None
        self.error: SpearError | None = None


class PeerPool:
    """Open connections to peer nodes, made on first use and kept while they live;
    a dead one is replaced on the next call. Get one from :func:`open_peer_pool`.

    A dial runs in the pool's own task: callers wait for it, and one that gives up
    (cancelled, past its deadline) leaves it to finish, so the connection is there
    for the next call and no half-made socket is dropped."""

    def __init__(self, node_id: str, token: str | None, nursery: trio.Nursery, connect_timeout: float) -> None:
        self._node_id = node_id
        self._token = token
        self._nursery = nursery
        self._connect_timeout = connect_timeout
        self._connections: dict[str, Connection] = {}
        self._dials: dict[str, _Dial] = {}

    async def connection(self, node: NodeInfo) -> Connection:
        """The open connection to *node*, dialled now if there is none;
        UNAVAILABLE naming the node if it cannot be reached."""
        existing = self._connections.get(node.node_id)
        if existing is not None and not existing.closed:
            return existing
        dial = self._dials.get(node.node_id)
        if dial is None:
            dial = self._dials[node.node_id] = _Dial()
            self._nursery.start_soon(self._dial, node, dial)
        await dial.done.wait()
        if dial.connection is None:
            error = dial.error or SpearError(ErrorCode.UNAVAILABLE, f"cannot reach node {node.node_id}")
            raise SpearError(error.code, error.message, dict(error.details))
        return dial.connection

    async def _dial(self, node: NodeInfo, dial: _Dial) -> None:
        try:
            url = peer_url(node)
            if url is None:
                raise SpearError(
                    ErrorCode.UNAVAILABLE, f"node {node.node_id} has no endpoint to dial", {"node_id": node.node_id}
                )
            try:
                with trio.fail_after(self._connect_timeout * 2):  # the connect, then the hello
                    connection: Connection = await self._nursery.start(self._hold, node.node_id, url)
            except trio.TooSlowError:
                raise SpearError(ErrorCode.UNAVAILABLE, "no welcome in time") from None
            except SpearError as exc:
                raise SpearError(
                    ErrorCode.UNAVAILABLE if exc.code is not ErrorCode.UNAUTHENTICATED else exc.code,
                    f"cannot reach node {node.node_id} at {url}: {exc.message}",
                    {"node_id": node.node_id},
                ) from None
            self._connections[node.node_id] = connection
            dial.connection = connection
        except SpearError as exc:
            if "node_id" not in exc.details:
                exc = SpearError(
                    exc.code, f"cannot reach node {node.node_id}: {exc.message}", {"node_id": node.node_id}
                )
            dial.error = exc
        finally:
            if dial.connection is None and dial.error is None:  # the pool closed meanwhile
                dial.error = SpearError(
                    ErrorCode.UNAVAILABLE,
                    f"stopped dialling node {node.node_id}: shutting down",
                    {"node_id": node.node_id},
                )
            del self._dials[node.node_id]
            dial.done.set()

    async def _hold(self, node_id: str, url: str, *, task_status: trio.TaskStatus[Connection]) -> None:
        started = False
        try:
            async with (
                open_transport(url, connect_timeout=self._connect_timeout) as transport,
                open_connection(
                    transport, Hello(role="node", peer_id=self._node_id, auth=self._token), config=_PEER_CONFIG
                ) as connection,
            ):
                task_status.started(connection)
                started = True
                await connection.wait_closed()
                if self._connections.get(node_id) is connection:
                    del self._connections[node_id]
        except (SpearError, OSError, trio.BrokenResourceError) as exc:
            if not started:
                if isinstance(exc, SpearError):
                    raise
                raise SpearError(ErrorCode.UNAVAILABLE, str(exc)) from None
            log.debug("peer connection to %s ended: %s", url, exc)


@asynccontextmanager
async def open_peer_pool(node_id: str, token: str | None, connect_timeout: float = 2.0) -> AsyncIterator[PeerPool]:
    """A pool of peer connections, all closed when the block ends."""
    async with background_nursery() as nursery:
        yield PeerPool(node_id, token, nursery, connect_timeout)

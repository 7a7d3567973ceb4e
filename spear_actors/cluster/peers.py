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


class PeerPool:
    """Open connections to peer nodes, made on first use and kept while they live;
    a dead one is replaced on the next call. Get one from :func:`open_peer_pool`."""

    def __init__(self, node_id: str, token: str | None, nursery: trio.Nursery, connect_timeout: float) -> None:
        self._node_id = node_id
        self._token = token
        self._nursery = nursery
        self._connect_timeout = connect_timeout
        self._connections: dict[str, Connection] = {}
        self._locks: dict[str, trio.Lock] = {}

    async def connection(self, node: NodeInfo) -> Connection:
        """The open connection to *node*, dialled now if there is none;
        UNAVAILABLE naming the node if it cannot be reached."""
        existing = self._connections.get(node.node_id)
        if existing is not None and not existing.closed:
            return existing
        lock = self._locks.setdefault(node.node_id, trio.Lock())
        async with lock:
            existing = self._connections.get(node.node_id)
            if existing is not None and not existing.closed:
                return existing
            url = peer_url(node)
            if url is None:
                raise SpearError(
                    ErrorCode.UNAVAILABLE, f"node {node.node_id} has no endpoint to dial", {"node_id": node.node_id}
                )
            try:
                connection: Connection = await self._nursery.start(self._hold, url)
            except SpearError as exc:
                raise SpearError(
                    ErrorCode.UNAVAILABLE if exc.code is not ErrorCode.UNAUTHENTICATED else exc.code,
                    f"cannot reach node {node.node_id} at {url}: {exc.message}",
                    {"node_id": node.node_id},
                ) from None
            self._connections[node.node_id] = connection
            return connection

    async def _hold(self, url: str, *, task_status: trio.TaskStatus[Connection]) -> None:
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

"""A protocol connection over any :class:`~.transports.Transport` (trio).

One :class:`Connection` per link, on both sides: a thin trio driver over the sans-IO
:class:`~.core.ProtocolCore`, which holds every rule (ids, correlation, credit,
sequence, cancel, the one terminal answer, heartbeat deadlines, protocol errors).
The driver is split by role: :mod:`.link` (what both share: the core, the outbox,
heartbeat, closing), :mod:`.calling` (requests and streams, callers that read their
own answer) and :mod:`.serving` (the reader task and the handlers it runs).

Its tasks (the reader, the writer, the heartbeat) live in a nursery of its own,
hidden behind :func:`~.handshake.open_connection` /
:func:`~.handshake.accept_connection` (which also do the hello/welcome handshake),
so the caller's code is never cancelled by a connection failure: failures surface as
:class:`SpearError` from the calls in flight.
"""

from __future__ import annotations

from typing import Any

import trio

from ..errors import ErrorCode, SpearError
from .link import ConnectionConfig
from .messages import Hello, Welcome
from .serving import Handler, Server
from .transports import Transport

__all__ = ["Connection", "ConnectionConfig"]


class Connection(Server):
    """An open, authenticated protocol connection. Use :func:`open_connection` or
    :func:`accept_connection` to get one; both close it on exit."""

    def __init__(
        self,
        transport: Transport,
        config: ConnectionConfig,
        *,
        handler: Handler | None,
        peer: Hello | Welcome,
        identity: Any = None,
        peer_max_frame_size: int | None = None,
    ) -> None:
        super().__init__(
            transport,
            config,
            serves=handler is not None,
            peer=peer,
            identity=identity,
            peer_max_frame_size=peer_max_frame_size,
        )
        self._init_calling(may_lead=handler is None and config.callers_read)
        self._init_serving(handler)

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._outbox.run_writer)
                nursery.start_soon(self._reader)
                nursery.start_soon(self._heartbeat)
                task_status.started()
        finally:
            self._die(SpearError(ErrorCode.UNAVAILABLE, "connection closed"))
            with trio.CancelScope(shield=True):
                await self.transport.aclose()

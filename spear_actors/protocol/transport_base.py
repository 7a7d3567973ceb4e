"""The :class:`Transport` interface every byte transport implements, and what serving
one shares: the handler type and how a handler's error ends one connection only.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Awaitable, Callable

from ..errors import ErrorCode, SpearError

__all__ = ["Transport", "TransportHandler"]

# the logger these messages had before the module was split out of transports.py
log = logging.getLogger("spear_actors.protocol.transports")


class Transport(abc.ABC):
    """Moves whole message bodies; knows nothing of what they mean."""

    description: str = "transport"

    @abc.abstractmethod
    async def send_bodies(self, bodies: list[bytes]) -> None:
        """Send *bodies* in order; raises :class:`SpearError` UNAVAILABLE if the link is gone.

        Cancelling it part way may leave a body half sent: the link is then unusable.
        """

    @abc.abstractmethod
    async def receive_body(self) -> bytes | None:
        """Return the next body, or None once the peer has closed (orderly or EOF).

        Raises :class:`ProtocolError` for a malformed or oversized frame and
        :class:`SpearError` UNAVAILABLE when the link breaks.
        """

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the link (best effort, orderly where the transport has a close)."""

    def closing_because(self, error: SpearError) -> None:  # noqa: B027 (optional hook)
        """Say why the link is about to close, for a transport whose close carries a
        reason (websocket close codes); others ignore it."""


def _lost(what: str, exc: BaseException) -> SpearError:
    return SpearError(ErrorCode.UNAVAILABLE, f"connection lost while {what}: {type(exc).__name__}")


TransportHandler = Callable[[Transport], Awaitable[None]]


async def _run_handler(handler: TransportHandler, transport: Transport) -> None:
    """Run *handler*; a :class:`SpearError` from it (a refused hello, a protocol error,
    a lost link) ends this one connection, never the listener and its other peers."""
    try:
        await handler(transport)
    except SpearError as exc:
        log.info("%s: connection ended: %s", transport.description, exc)

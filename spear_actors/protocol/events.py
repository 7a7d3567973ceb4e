"""The events a :class:`~.core.ProtocolCore` reports (sans-IO, no trio)."""

from __future__ import annotations

from ..errors import SpearError
from .framing import ProtocolError
from .slots import SlotsValue

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the agent's start-up
    from typing import Any, TypeAlias

__all__ = [
    "CancelReceived",
    "ConnectionClosed",
    "CreditReceived",
    "ErrorReceived",
    "Event",
    "ItemReceived",
    "RequestReceived",
    "ResponseReceived",
]


class RequestReceived(SlotsValue):
    """The peer called *method*; answer it with :meth:`ProtocolCore.respond` or
    :meth:`ProtocolCore.fail` (exactly one of them counts). ``window`` set: a stream."""

    __slots__ = ("id", "method", "params", "timeout_ms", "window")

    def __init__(self, id: int, method: str, params: Any, timeout_ms: int | None, window: int | None) -> None:
        self.id = id
        self.method = method
        self.params = params
        self.timeout_ms = timeout_ms
        self.window = window


class ResponseReceived(SlotsValue):
    """The successful terminal answer to our request *id* (``response`` or ``stream_end``)."""

    __slots__ = ("id", "result")

    def __init__(self, id: int, result: Any) -> None:
        self.id = id
        self.result = result


class ErrorReceived(SlotsValue):
    """The failing terminal answer to our request *id*."""

    __slots__ = ("error", "id")

    def __init__(self, id: int, error: SpearError) -> None:
        self.id = id
        self.error = error


class ItemReceived(SlotsValue):
    """One item of the stream answering our request *id*."""

    __slots__ = ("data", "id", "seq")

    def __init__(self, id: int, seq: int, data: Any) -> None:
        self.id = id
        self.seq = seq
        self.data = data


class CancelReceived(SlotsValue):
    """The peer gave up its request *id*, which we serve (reported once)."""

    __slots__ = ("id", "reason")

    def __init__(self, id: int, reason: str) -> None:
        self.id = id
        self.reason = reason


class CreditReceived(SlotsValue):
    """The consumer of our stream answer *id* can take *n* more items."""

    __slots__ = ("id", "n")

    def __init__(self, id: int, n: int) -> None:
        self.id = id
        self.n = n


class ConnectionClosed(SlotsValue):
    """The connection is over (reported once). ``error`` is what every request still
    in flight fails with; ``failed`` lists those requests of ours; ``cause`` is the
    protocol error the peer was told about, if that is why."""

    __slots__ = ("cause", "error", "failed")

    def __init__(self, error: SpearError, failed: list[int], cause: ProtocolError | None = None) -> None:
        self.error = error
        self.failed = failed
        self.cause = cause


Event: TypeAlias = (
    RequestReceived
    | ResponseReceived
    | ErrorReceived
    | ItemReceived
    | CancelReceived
    | CreditReceived
    | ConnectionClosed
)

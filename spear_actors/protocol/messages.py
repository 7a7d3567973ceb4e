"""Typed protocol messages and their msgpack encoding (sans-IO).

Every message on the wire is a msgpack map with a ``type`` key; the remaining keys
are the fields of the dataclass of that type. Decoding is strict: anything that is
not a well-formed message of a known type raises :class:`ProtocolError` naming the
offending field, and no other exception escapes :func:`decode_message`.

Unknown keys are ignored, so a newer peer may add optional fields.
"""

from __future__ import annotations

from collections.abc import Callable

import msgpack

from ..errors import ErrorCode, SpearError
from .framing import ProtocolError
from .slots import SlotsValue

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is not imported at run time: see _Message
    from typing import Any, Final, TypeAlias

__all__ = [
    "MAX_CONTAINER_ENTRIES",
    "MAX_NESTING",
    "MAX_UINT64",
    "PROTOCOL_VERSION",
    "Cancel",
    "Credit",
    "Error",
    "Goodbye",
    "Hello",
    "Message",
    "Ping",
    "Pong",
    "Request",
    "Response",
    "StreamEnd",
    "StreamItem",
    "Welcome",
    "decode_message",
    "encode_message",
]

PROTOCOL_VERSION: Final = 1
MAX_UINT64: Final = 2**64 - 1

_Check = Callable[[str, object], object]


def _uint(name: str, value: object) -> int:
    if type(value) is not int or not 0 <= value <= MAX_UINT64:
        raise ProtocolError(f"field {name!r} must be an unsigned 64-bit integer, got {_show(value)}")
    return value


def _opt_uint(name: str, value: object) -> int | None:
    return None if value is None else _uint(name, value)


def _str(name: str, value: object) -> str:
    if type(value) is not str:
        raise ProtocolError(f"field {name!r} must be a string, got {_show(value)}")
    return value


def _opt_str(name: str, value: object) -> str | None:
    return None if value is None else _str(name, value)


def _bytes(name: str, value: object) -> bytes:
    if type(value) is not bytes:
        raise ProtocolError(f"field {name!r} must be bytes (msgpack bin), got {_show(value)}")
    return value


def _map(name: str, value: object) -> dict[Any, Any]:
    if type(value) is not dict:
        raise ProtocolError(f"field {name!r} must be a map, got {_show(value)}")
    return value


def _any(name: str, value: object) -> object:
    return value


def _code(name: str, value: object) -> str:
    text = _str(name, value)
    if text not in ErrorCode.__members__:
        raise ProtocolError(f"field {name!r} is not a known error code: {text[:64]!r}")
    return text


def _show(value: object) -> str:
    if value is None:
        return "nil"
    return type(value).__name__


class _Message(SlotsValue):
    """Base of the message classes (``TYPE``: the wire name of the message)."""

    __slots__: tuple[str, ...] = ()
    TYPE = ""


class Hello(_Message):
    """First message of the side that opened the connection."""

    __slots__ = ("auth", "max_frame_size", "meta", "peer_id", "role", "version")
    TYPE = "hello"

    def __init__(
        self,
        version: int = PROTOCOL_VERSION,
        role: str = "client",
        auth: str | None = None,
        peer_id: str | None = None,
        meta: dict[Any, Any] | None = None,
        max_frame_size: int | None = None,
    ) -> None:
        self.version = version
        self.role = role
        self.auth = auth
        self.peer_id = peer_id
        self.meta: dict[Any, Any] = {} if meta is None else meta
        self.max_frame_size = max_frame_size
        """The largest body the opener takes (nil: the default, 16 MiB)."""


class Welcome(_Message):
    """The accepting side's answer to a good hello; the connection is then open."""

    __slots__ = (
        "heartbeat_interval_ms",
        "heartbeat_timeout_ms",
        "max_frame_size",
        "meta",
        "peer_id",
        "role",
        "version",
    )
    TYPE = "welcome"

    def __init__(
        self,
        version: int = PROTOCOL_VERSION,
        role: str = "node",
        peer_id: str | None = None,
        heartbeat_interval_ms: int = 5000,
        heartbeat_timeout_ms: int = 15000,
        max_frame_size: int = 16 * 1024 * 1024,
        meta: dict[Any, Any] | None = None,
    ) -> None:
        self.version = version
        self.role = role
        self.peer_id = peer_id
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.max_frame_size = max_frame_size
        self.meta: dict[Any, Any] = {} if meta is None else meta


class Request(_Message):
    """A call. ``window`` set means the caller wants a stream and grants that credit."""

    __slots__ = ("id", "method", "params", "timeout_ms", "window")
    TYPE = "request"

    def __init__(
        self, id: int, method: str, params: Any = None, timeout_ms: int | None = None, window: int | None = None
    ) -> None:
        self.id = id
        self.method = method
        self.params = params
        self.timeout_ms = timeout_ms
        self.window = window


class Response(_Message):
    """The successful, terminal answer to a unary request."""

    __slots__ = ("id", "result")
    TYPE = "response"

    def __init__(self, id: int, result: Any = None) -> None:
        self.id = id
        self.result = result


class Error(_Message):
    """A terminal failure of request ``id``, or of the connection when ``id`` is nil."""

    __slots__ = ("code", "details", "id", "message")
    TYPE = "error"

    def __init__(self, id: int | None, code: str, message: str = "", details: dict[Any, Any] | None = None) -> None:
        self.id = id
        self.code = code
        self.message = message
        self.details: dict[Any, Any] = {} if details is None else details

    def to_exception(self) -> SpearError:
        """The :class:`SpearError` this message carries."""
        return SpearError(ErrorCode(self.code), self.message, dict(self.details))

    @classmethod
    def from_exception(cls, request_id: int | None, error: SpearError) -> Error:
        """The message that carries *error* as the answer to *request_id*."""
        return cls(request_id, error.code.value, error.message, dict(error.details))


class StreamItem(_Message):
    """One item of a stream answer; ``seq`` counts from 0 without gaps."""

    __slots__ = ("data", "id", "seq")
    TYPE = "stream_item"

    def __init__(self, id: int, seq: int, data: Any = None) -> None:
        self.id = id
        self.seq = seq
        self.data = data


class StreamEnd(_Message):
    """Successful end of a stream: ``seq`` items were sent; ``result`` is a final value."""

    __slots__ = ("id", "result", "seq")
    TYPE = "stream_end"

    def __init__(self, id: int, seq: int, result: Any = None) -> None:
        self.id = id
        self.seq = seq
        self.result = result


class Cancel(_Message):
    """The caller gives up request ``id``; the callee cancels its handler."""

    __slots__ = ("id", "reason")
    TYPE = "cancel"

    def __init__(self, id: int, reason: str = "") -> None:
        self.id = id
        self.reason = reason


class Credit(_Message):
    """The stream consumer of request ``id`` can take ``n`` more items."""

    __slots__ = ("id", "n")
    TYPE = "credit"

    def __init__(self, id: int, n: int) -> None:
        self.id = id
        self.n = n


class Ping(_Message):
    """Heartbeat probe; the peer answers with a pong carrying the same seq and payload."""

    __slots__ = ("payload", "seq")
    TYPE = "ping"

    def __init__(self, seq: int, payload: bytes = b"") -> None:
        self.seq = seq
        self.payload = payload


class Pong(_Message):
    """Answer to a ping."""

    __slots__ = ("payload", "seq")
    TYPE = "pong"

    def __init__(self, seq: int, payload: bytes = b"") -> None:
        self.seq = seq
        self.payload = payload


class Goodbye(_Message):
    """Orderly close: the sender sends nothing more after it."""

    __slots__ = ("reason",)
    TYPE = "goodbye"

    def __init__(self, reason: str = "") -> None:
        self.reason = reason


Message: TypeAlias = (
    Hello | Welcome | Request | Response | Error | StreamItem | StreamEnd | Cancel | Credit | Ping | Pong | Goodbye
)

_REQUIRED: Final = object()

# type -> (class, ((field, check, default-or-_REQUIRED), ...))
_SCHEMA: dict[str, tuple[type[Any], tuple[tuple[str, _Check, object], ...]]] = {
    Hello.TYPE: (
        Hello,
        (
            ("version", _uint, _REQUIRED),
            ("role", _str, _REQUIRED),
            ("auth", _opt_str, None),
            ("peer_id", _opt_str, None),
            ("meta", _map, dict),
            ("max_frame_size", _opt_uint, None),
        ),
    ),
    Welcome.TYPE: (
        Welcome,
        (
            ("version", _uint, _REQUIRED),
            ("role", _str, _REQUIRED),
            ("peer_id", _opt_str, None),
            ("heartbeat_interval_ms", _uint, _REQUIRED),
            ("heartbeat_timeout_ms", _uint, _REQUIRED),
            ("max_frame_size", _uint, _REQUIRED),
            ("meta", _map, dict),
        ),
    ),
    Request.TYPE: (
        Request,
        (
            ("id", _uint, _REQUIRED),
            ("method", _str, _REQUIRED),
            ("params", _any, None),
            ("timeout_ms", _opt_uint, None),
            ("window", _opt_uint, None),
        ),
    ),
    Response.TYPE: (Response, (("id", _uint, _REQUIRED), ("result", _any, None))),
    Error.TYPE: (
        Error,
        (
            ("id", _opt_uint, None),
            ("code", _code, _REQUIRED),
            ("message", _str, ""),
            ("details", _map, dict),
        ),
    ),
    StreamItem.TYPE: (
        StreamItem,
        (
            ("id", _uint, _REQUIRED),
            ("seq", _uint, _REQUIRED),
            ("data", _any, None),
        ),
    ),
    StreamEnd.TYPE: (
        StreamEnd,
        (
            ("id", _uint, _REQUIRED),
            ("seq", _uint, _REQUIRED),
            ("result", _any, None),
        ),
    ),
    Cancel.TYPE: (Cancel, (("id", _uint, _REQUIRED), ("reason", _str, ""))),
    Credit.TYPE: (Credit, (("id", _uint, _REQUIRED), ("n", _uint, _REQUIRED))),
    Ping.TYPE: (Ping, (("seq", _uint, _REQUIRED), ("payload", _bytes, b""))),
    Pong.TYPE: (Pong, (("seq", _uint, _REQUIRED), ("payload", _bytes, b""))),
    Goodbye.TYPE: (Goodbye, (("reason", _str, ""),)),
}

MAX_CONTAINER_ENTRIES: Final = 1_000_000
"""Most entries of one msgpack array or map in a body (docs/protocol.md §2)."""
MAX_NESTING: Final = 1024
"""Deepest nesting of arrays and maps in a body, counting the message map itself
(docs/protocol.md §2). It is the limit of msgpack's C decoder and encoder, which
both enforce it."""


def _undecodable(exc: Exception) -> str:
    """Say what is wrong with a body msgpack refused, in words a peer can act on."""
    if isinstance(exc, msgpack.ExtraData):
        return f"trailing bytes: {len(exc.extra)} bytes after the one msgpack value"
    if isinstance(exc, msgpack.StackError):
        return f"nesting deeper than {MAX_NESTING} levels"
    if isinstance(exc, msgpack.FormatError):
        return "invalid msgpack: a byte that starts no msgpack type (0xc1)"
    if isinstance(exc, UnicodeDecodeError):
        return f"a str is not valid UTF-8 ({exc.reason})"
    if isinstance(exc, TypeError):
        return "a map key is an array or a map (keys must be nil, bool, int, float, str or bin)"
    text = str(exc)
    if "incomplete input" in text:
        return "truncated: the body ends inside a msgpack value"
    if "exceeds max_array_len" in text:
        return f"too many entries: an array of more than {MAX_CONTAINER_ENTRIES} entries"
    if "exceeds max_map_len" in text:
        return f"too many entries: a map of more than {MAX_CONTAINER_ENTRIES} entries"
    return f"body is not one valid msgpack value: {type(exc).__name__}: {text[:100]}"


def decode_message(body: bytes) -> Message:
    """Parse one msgpack body into a message; any defect is a :class:`ProtocolError`."""
    try:
        raw = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=False,
            max_array_len=MAX_CONTAINER_ENTRIES,
            max_map_len=MAX_CONTAINER_ENTRIES,
        )
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        # ExtraData, FormatError, StackError, UnicodeDecodeError are all ValueErrors;
        # an unhashable map key is a TypeError.
        raise ProtocolError(_undecodable(exc)) from None
    if type(raw) is not dict:
        raise ProtocolError(f"message must be a msgpack map, got {_show(raw)}")
    kind = raw.get("type")
    # Fast paths for the messages of every call; anything they do not accept goes
    # through the schema below, which names what is wrong.
    if kind == "response":
        request_id = raw.get("id")
        if type(request_id) is int and 0 <= request_id <= MAX_UINT64:
            return Response(request_id, raw.get("result"))
    elif kind == "request":
        request_id, method = raw.get("id"), raw.get("method")
        timeout_ms, window = raw.get("timeout_ms"), raw.get("window")
        if (
            type(request_id) is int
            and 0 <= request_id <= MAX_UINT64
            and type(method) is str
            and (timeout_ms is None or (type(timeout_ms) is int and 0 <= timeout_ms <= MAX_UINT64))
            and (window is None or (type(window) is int and 0 <= window <= MAX_UINT64))
        ):
            return Request(request_id, method, raw.get("params"), timeout_ms, window)
    if type(kind) is not str:
        raise ProtocolError(f"field 'type' must be a string, got {_show(kind)}")
    schema = _SCHEMA.get(kind)
    if schema is None:
        raise ProtocolError(f"unknown message type {kind[:64]!r}")
    cls, fields = schema
    values: dict[str, object] = {}
    for name, check, default in fields:
        if name in raw:
            values[name] = check(name, raw[name])
        elif default is _REQUIRED:
            raise ProtocolError(f"{kind} message is missing field {name!r}")
        elif default is dict:
            values[name] = {}
        else:
            values[name] = default
    return cls(**values)  # type: ignore[no-any-return]


def encode_message(message: Message) -> bytes:
    """Serialize *message* to a msgpack body.

    A value msgpack cannot carry (an integer outside the 64-bit range, an object of
    an unsupported type) is a :class:`ProtocolError` naming the field.
    """
    payload: dict[str, object] = {"type": message.TYPE}
    for name in message.__slots__:
        value = getattr(message, name)
        if value is not None:
            payload[name] = value
    try:
        return _PACKER.pack(payload)  # type: ignore[no-any-return]
    except (OverflowError, TypeError, ValueError) as exc:
        raise ProtocolError(_unencodable(payload, exc)) from None


# One packer for every message: msgpack.packb makes a new one per call, which costs
# several times the packing of a small message. Packing holds the GIL throughout and
# resets the packer on failure, so threads (the agent's) may share it.
_PACKER: Final = msgpack.Packer(use_bin_type=True, autoreset=True)


def _unencodable(payload: dict[str, object], exc: Exception) -> str:
    for name, value in payload.items():
        try:
            msgpack.packb(value, use_bin_type=True)
        except (OverflowError, TypeError, ValueError) as field_exc:
            if "recursion limit" in str(field_exc):
                return f"field {name!r} cannot be encoded as msgpack: nesting deeper than {MAX_NESTING} levels"
            return f"field {name!r} cannot be encoded as msgpack: {field_exc}"
    if "recursion limit" in str(exc):
        return f"message cannot be encoded as msgpack: nesting deeper than {MAX_NESTING} levels"
    return f"message cannot be encoded as msgpack: {exc}"

"""Messages: every type round-trips; decoding is strict and raises only ProtocolError."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from spear_actors.errors import ErrorCode, SpearError
from spear_actors.protocol.framing import FrameDecoder, ProtocolError, encode_frame
from spear_actors.protocol.messages import (
    _SCHEMA,
    MAX_UINT64,
    PROTOCOL_VERSION,
    Cancel,
    Credit,
    Error,
    Goodbye,
    Hello,
    Message,
    Ping,
    Pong,
    Request,
    Response,
    StreamEnd,
    StreamItem,
    Welcome,
    decode_message,
    encode_message,
)

ALL_TYPES = (Hello, Welcome, Request, Response, Error, StreamItem, StreamEnd, Cancel, Credit, Ping, Pong, Goodbye)

u64 = st.integers(min_value=0, max_value=MAX_UINT64)
text = st.text(max_size=20)
opt_text = st.none() | text
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=MAX_UINT64)
    | st.floats(allow_nan=False)
    | text
    | st.binary(max_size=20)
)
# What msgpack carries and gives back equal (lists, not tuples; no NaN).
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(text | st.integers(min_value=-5, max_value=5), inner, max_size=4)
    ),
    max_leaves=12,
)
maps = st.dictionaries(text, values, max_size=4)
codes = st.sampled_from([c.value for c in ErrorCode])

STRATEGIES: dict[type[Any], st.SearchStrategy[Any]] = {
    Hello: st.builds(Hello, version=u64, role=text, auth=opt_text, peer_id=opt_text, meta=maps),
    Welcome: st.builds(
        Welcome,
        version=u64,
        role=text,
        peer_id=opt_text,
        heartbeat_interval_ms=u64,
        heartbeat_timeout_ms=u64,
        max_frame_size=u64,
        meta=maps,
    ),
    Request: st.builds(Request, id=u64, method=text, params=values, timeout_ms=st.none() | u64, window=st.none() | u64),
    Response: st.builds(Response, id=u64, result=values),
    Error: st.builds(Error, id=st.none() | u64, code=codes, message=text, details=maps),
    StreamItem: st.builds(StreamItem, id=u64, seq=u64, data=values),
    StreamEnd: st.builds(StreamEnd, id=u64, seq=u64, result=values),
    Cancel: st.builds(Cancel, id=u64, reason=text),
    Credit: st.builds(Credit, id=u64, n=u64),
    Ping: st.builds(Ping, seq=u64, payload=st.binary(max_size=20)),
    Pong: st.builds(Pong, seq=u64, payload=st.binary(max_size=20)),
    Goodbye: st.builds(Goodbye, reason=text),
}
messages: st.SearchStrategy[Message] = st.one_of(*STRATEGIES.values())


def _body(**fields: Any) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)  # type: ignore[no-any-return]


def test_strategies_and_schema_cover_exactly_the_message_types() -> None:
    assert set(STRATEGIES) == set(ALL_TYPES)
    assert set(_SCHEMA) == {cls.TYPE for cls in ALL_TYPES}
    assert len(ALL_TYPES) == 12


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda cls: cls.TYPE)
@given(data=st.data())
def test_every_message_type_round_trips(cls: type[Any], data: st.DataObject) -> None:
    message = data.draw(STRATEGIES[cls])
    body = encode_message(message)
    assert type(body) is bytes
    decoded = decode_message(body)
    assert type(decoded) is cls
    assert decoded == message


@given(st.lists(messages, max_size=8), st.lists(st.integers(min_value=0, max_value=100_000), max_size=12))
def test_message_frames_cut_anywhere_decode_to_the_same_messages(items: list[Message], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(encode_message(m)) for m in items)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    decoder = FrameDecoder()
    out: list[Message] = []
    start = 0
    for point in [*points, len(stream)]:
        decoder.feed(stream[start:point])
        start = point
        while (body := decoder.next_body()) is not None:
            out.append(decode_message(body))
    assert out == items


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_nothing_but_protocol_error(data: bytes) -> None:
    try:
        decode_message(data)
    except ProtocolError as exc:
        assert exc.code is ErrorCode.PROTOCOL_ERROR


@given(values)
def test_arbitrary_msgpack_values_raise_nothing_but_protocol_error(value: Any) -> None:
    try:
        decode_message(msgpack.packb(value, use_bin_type=True))
    except ProtocolError:
        pass


_FIELD_NAMES = sorted({name for cls in ALL_TYPES for name in cls.__slots__})


@given(
    st.sampled_from([cls.TYPE for cls in ALL_TYPES]),
    st.dictionaries(st.sampled_from(_FIELD_NAMES), values, max_size=6),
)
def test_typed_maps_with_arbitrary_fields_decode_or_raise_protocol_error(kind: str, fields: dict[str, Any]) -> None:
    try:
        message = decode_message(_body(type=kind, **fields))
    except ProtocolError as exc:
        assert "field" in exc.message or "missing" in exc.message
    else:
        assert kind == message.TYPE


def test_version_constant() -> None:
    assert PROTOCOL_VERSION == 1
    assert Hello().version == 1 and Welcome().version == 1


def test_none_fields_are_left_out_of_the_map() -> None:
    raw = msgpack.unpackb(encode_message(Request(7, "echo")), raw=False)
    assert raw == {"type": "request", "id": 7, "method": "echo"}


def test_unknown_keys_are_ignored() -> None:
    assert decode_message(_body(type="cancel", id=3, future_field=[1, 2])) == Cancel(3)


def test_defaults_fill_optional_fields() -> None:
    assert decode_message(_body(type="error", code="NOT_FOUND")) == Error(None, "NOT_FOUND", "", {})
    assert decode_message(_body(type="ping", seq=1)) == Ping(1, b"")
    assert decode_message(_body(type="hello", version=1, role="cli")) == Hello(1, "cli")


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"type": "request", "id": 1}, "'method'"),
        ({"type": "request", "method": "m"}, "'id'"),
        (
            {"type": "welcome", "version": 1, "role": "node", "heartbeat_interval_ms": 1, "heartbeat_timeout_ms": 1},
            "'max_frame_size'",
        ),
        ({"type": "credit", "id": 1}, "'n'"),
        ({"type": "error", "id": 1}, "'code'"),
    ],
)
def test_missing_field_is_named(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(ProtocolError, match="missing field " + named):
        decode_message(_body(**fields))


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"type": "request", "id": "1", "method": "m"}, "'id'"),
        ({"type": "request", "id": -1, "method": "m"}, "'id'"),
        ({"type": "request", "id": True, "method": "m"}, "'id'"),
        ({"type": "request", "id": 1.0, "method": "m"}, "'id'"),
        ({"type": "request", "id": 1, "method": b"m"}, "'method'"),
        ({"type": "request", "id": 1, "method": "m", "timeout_ms": "5"}, "'timeout_ms'"),
        ({"type": "request", "id": 1, "method": "m", "window": -3}, "'window'"),
        ({"type": "hello", "version": 1, "role": "c", "meta": [1]}, "'meta'"),
        ({"type": "hello", "version": 1, "role": "c", "auth": 5}, "'auth'"),
        ({"type": "error", "id": 1, "code": "NOPE"}, "'code'"),
        ({"type": "error", "id": 1, "code": 5}, "'code'"),
        ({"type": "error", "id": 1, "code": "INTERNAL", "details": "x"}, "'details'"),
        ({"type": "stream_item", "id": 1, "seq": None}, "'seq'"),
        ({"type": "ping", "seq": 1, "payload": "abc"}, "'payload'"),  # str where bytes belong
        ({"type": "pong", "seq": 1, "payload": "abc"}, "'payload'"),
        ({"type": "goodbye", "reason": b"bye"}, "'reason'"),
    ],
)
def test_wrong_type_is_named(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(ProtocolError, match="field " + named):
        decode_message(_body(**fields))


def test_str_where_bytes_belong_says_bytes() -> None:
    with pytest.raises(ProtocolError, match="'payload' must be bytes"):
        decode_message(_body(type="ping", seq=1, payload="not bytes"))


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"", "truncated"),
        (b"\xc1", "invalid msgpack"),
        (_body(type="cancel", id=1) + b"\x00", "trailing bytes: 1 bytes after the one msgpack value"),
        (msgpack.packb([1, 2]), "must be a msgpack map"),
        (_body(id=1), "field 'type' must be a string"),
        (_body(type=b"request"), "field 'type' must be a string"),
        (_body(type="subscribe"), "unknown message type 'subscribe'"),
        (b"\x81\x91\x01\x01", "a map key is an array or a map"),
        (b"\x92\x01", "truncated: the body ends inside a msgpack value"),
        (b"\x91" * 1024 + b"\x01", "must be a msgpack map"),  # as deep as allowed
        (b"\x91" * 1025 + b"\x01", "nesting deeper than 1024 levels"),
        (b"\xa1\xff", "a str is not valid UTF-8"),
        (b"\xdd\x00\x0f\x42\x41", "too many entries: an array of more than 1000000 entries"),
        (b"\xdf\x00\x0f\x42\x41", "too many entries: a map of more than 1000000 entries"),
    ],
)
def test_malformed_bodies(body: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_message(body)


def test_deep_nesting_is_a_protocol_error() -> None:
    body = b"\x83\xa4type\xa8response\xa2id\x01\xa6result" + b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(ProtocolError):
        decode_message(body)


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1])
def test_integer_too_large_for_msgpack_is_named(value: int) -> None:
    with pytest.raises(ProtocolError, match="field 'params' cannot be encoded") as info:
        encode_message(Request(1, "m", {"n": [value]}))
    assert info.value.code is ErrorCode.PROTOCOL_ERROR


def test_unencodable_object_is_named() -> None:
    with pytest.raises(ProtocolError, match="field 'result' cannot be encoded"):
        encode_message(Response(1, object()))


def test_id_too_large_is_named() -> None:
    with pytest.raises(ProtocolError, match="field 'id' cannot be encoded"):
        encode_message(Cancel(2**64))


def test_error_message_carries_a_spear_error_both_ways() -> None:
    error = SpearError(ErrorCode.RESOURCE_EXHAUSTED, "full", {"retry_after_ms": 50})
    message = Error.from_exception(9, error)
    back = decode_message(encode_message(message))
    assert isinstance(back, Error)
    again = back.to_exception()
    assert (again.code, again.message, again.details) == (error.code, "full", {"retry_after_ms": 50})

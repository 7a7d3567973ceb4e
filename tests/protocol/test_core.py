"""The sans-IO protocol core, driven with bytes alone (no trio, no sockets)."""

from __future__ import annotations

from typing import Any

import pytest

from spear_actors.errors import ErrorCode, SpearError
from spear_actors.protocol.core import (
    MIN_FRAME_SIZE,
    CancelReceived,
    ConnectionClosed,
    CreditReceived,
    ErrorReceived,
    Event,
    ItemReceived,
    ProtocolCore,
    RequestReceived,
    ResponseReceived,
    check_hello,
    check_welcome,
)
from spear_actors.protocol.framing import CLOSE_FRAME, ProtocolError, encode_frame
from spear_actors.protocol.messages import (
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


def frames(*messages: Message) -> bytes:
    return b"".join(encode_frame(encode_message(m)) for m in messages)


def feed(core: ProtocolCore, data: bytes, *, bytewise: bool = False, now: float = 0.0) -> list[Event]:
    """Feed *data* (all at once, or one byte at a time) and collect every event."""
    events: list[Event] = []
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    for chunk in chunks:
        core.receive_data(chunk, now)
        while (event := core.next_event()) is not None:
            events.append(event)
    return events


def sent(core: ProtocolCore) -> list[Message]:
    return [decode_message(body) for body in core.data_to_send()]


def closed_with(events: list[Event], code: ErrorCode, text: str) -> str:
    """The fatal error the core queued for the peer, checked."""
    assert isinstance(events[-1], ConnectionClosed)
    assert events[-1].error.code == code
    return text


def fatal(core: ProtocolCore) -> Error:
    [error] = sent(core)
    assert isinstance(error, Error) and error.id is None and error.code == ErrorCode.PROTOCOL_ERROR.value
    return error


@pytest.fixture(params=[False, True], ids=["whole", "bytewise"])
def bytewise(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_requests_become_events_and_answers_follow_their_shape(bytewise: bool) -> None:
    core = ProtocolCore(now=0)
    events = feed(
        core,
        frames(Request(1, "echo", {"x": 1}, 5000), Request(2, "count", 3, window=2)),
        bytewise=bytewise,
    )
    assert events == [RequestReceived(1, "echo", {"x": 1}, 5000, None), RequestReceived(2, "count", 3, None, 2)]
    assert decode_message(core.send_item(2, "a")) == StreamItem(2, 0, "a")
    # a stream request's successful answer is a stream_end, whatever the handler returned
    assert decode_message(core.respond(2, "done") or b"") == StreamEnd(2, 1, "done")
    assert decode_message(core.respond(1, {"x": 1}) or b"") == Response(1, {"x": 1})
    assert core.serving == {}


def test_one_terminal_answer_per_request() -> None:
    core = ProtocolCore(now=0)
    feed(core, frames(Request(1, "m")))
    assert core.respond(1, "first") is not None
    assert core.respond(1, "again") is None
    assert core.fail(1, SpearError(ErrorCode.INTERNAL, "late")) is None


def test_a_cancel_is_reported_once_and_answered_once() -> None:
    core = ProtocolCore(now=0)
    events = feed(core, frames(Request(1, "m"), Cancel(1, "enough"), Cancel(1, "again"), Cancel(9, "unknown")))
    assert events == [RequestReceived(1, "m", None, None, None), CancelReceived(1, "enough")]
    answer = decode_message(core.fail(1, SpearError(ErrorCode.CANCELLED, "enough")) or b"")
    assert answer == Error(1, "CANCELLED", "enough")
    assert core.respond(1, "too late") is None
    # a cancel after the answer is ignored
    assert feed(core, frames(Cancel(1, ""))) == []
    # an empty reason is confirmed as "cancelled by peer"
    events = feed(core, frames(Request(2, "m"), Cancel(2, "")))
    assert events[-1] == CancelReceived(2, "cancelled by peer")


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        ([0], "request id 0: ids start at 1"),
        ([5, 3], r"request id 3 is not above the previous one \(5\)"),
        ([1, 1], r"request id 1 is not above the previous one \(1\)"),
    ],
)
def test_request_ids_start_at_1_and_only_increase(ids: list[int], match: str) -> None:
    core = ProtocolCore(now=0)
    events = feed(core, frames(*(Request(i, "m") for i in ids)))
    assert isinstance(events[-1], ConnectionClosed)
    assert events[-1].error.code == ErrorCode.UNAVAILABLE
    with pytest.raises(ProtocolError, match=match):
        raise ProtocolError(fatal(core).message)


def test_an_id_reused_after_its_answer_is_refused() -> None:
    core = ProtocolCore(now=0)
    feed(core, frames(Request(1, "m")))
    core.respond(1, None)
    events = feed(core, frames(Request(1, "m")))
    assert isinstance(events[-1], ConnectionClosed)
    assert "not above the previous one" in fatal(core).message


def test_gaps_in_request_ids_are_allowed() -> None:
    core = ProtocolCore(now=0)
    assert [e.id for e in feed(core, frames(Request(2, "m"), Request(7, "m"))) if isinstance(e, RequestReceived)] == [
        2,
        7,
    ]


def test_timeout_ms_0_is_already_expired() -> None:
    core = ProtocolCore(now=0)
    assert feed(core, frames(Request(1, "slow", timeout_ms=0))) == []
    assert sent(core) == [Error(1, "DEADLINE_EXCEEDED", "slow: deadline of 0 ms exceeded")]
    assert core.serving == {}


def test_a_side_that_serves_nothing_refuses_requests_not_found() -> None:
    core = ProtocolCore(now=0, serves=False)
    assert feed(core, frames(Request(1, "m"))) == []
    assert sent(core) == [Error(1, "NOT_FOUND", "no such method: m")]


def test_calls_get_ids_from_1_and_answers_in_any_order(bytewise: bool) -> None:
    core = ProtocolCore(now=0)
    first, body1 = core.request("a", 1, timeout_ms=100)
    second, _ = core.request("b")
    assert (first, second) == (1, 2)
    assert decode_message(body1) == Request(1, "a", 1, 100)
    events = feed(
        core,
        frames(Error(2, "NOT_FOUND", "no b"), Response(1, "one"), Response(1, "dup"), Response(99, "?")),
        bytewise=bytewise,
    )
    assert events[0] == ErrorReceived(2, SpearError(ErrorCode.NOT_FOUND, "no b")) or (
        isinstance(events[0], ErrorReceived) and events[0].error.code == ErrorCode.NOT_FOUND
    )
    assert events[1:] == [ResponseReceived(1, "one")]
    assert core.pending == {}


def test_a_request_that_cannot_be_sent_uses_no_id() -> None:
    core = ProtocolCore(now=0, peer_max_frame_size=MIN_FRAME_SIZE)
    with pytest.raises(SpearError) as info:
        core.request("big", "x" * 2000)
    assert info.value.code == ErrorCode.RESOURCE_EXHAUSTED
    with pytest.raises(ProtocolError, match="field 'params' cannot be encoded"):
        core.request("bad", 2**64)
    assert core.request("ok")[0] == 1


def test_a_stream_we_consume_checks_sequence_credit_and_count(bytewise: bool) -> None:
    core = ProtocolCore(now=0)
    request_id, _ = core.request("count", window=2)
    events = feed(core, frames(StreamItem(1, 0, "a"), StreamItem(1, 1, "b")), bytewise=bytewise)
    assert events == [ItemReceived(1, 0, "a"), ItemReceived(1, 1, "b")]
    assert core.item_taken(request_id) is not None  # window 2: credit every item
    assert decode_message(core.item_taken(request_id) or b"") == Credit(1, 1)
    events = feed(core, frames(StreamItem(1, 2, "c"), StreamEnd(1, 3, "done")))
    assert events == [ItemReceived(1, 2, "c"), ResponseReceived(1, "done")]


@pytest.mark.parametrize(
    ("answers", "match"),
    [
        ([StreamItem(1, 1, "x")], "item seq 1, expected 0"),
        ([StreamItem(1, 0, "x"), StreamItem(1, 1, "y"), StreamItem(1, 2, "z")], "more items than its credit"),
        ([StreamItem(1, 0, "x"), StreamEnd(1, 2)], "stream_end says 2 items, 1 arrived"),
    ],
)
def test_stream_violations_are_protocol_errors(answers: list[Message], match: str) -> None:
    core = ProtocolCore(now=0)
    core.request("count", window=2)
    events = feed(core, frames(*answers))
    assert isinstance(events[-1], ConnectionClosed) and events[-1].failed == [1]
    assert match in fatal(core).message


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (StreamItem(1, 0, "x"), "stream_item for unary request 1"),
        (StreamEnd(1, 0), "stream_end for unary request 1"),
        (Hello(), "unexpected hello after the handshake"),
        (Welcome(), "unexpected welcome after the handshake"),
    ],
)
def test_answers_of_the_wrong_shape_are_protocol_errors(answer: Message, match: str) -> None:
    core = ProtocolCore(now=0)
    core.request("unary")
    events = feed(core, frames(answer))
    assert isinstance(events[-1], ConnectionClosed) and events[-1].failed == [1]
    assert match in fatal(core).message
    with pytest.raises(SpearError) as info:
        core.request("after")
    assert info.value.code == ErrorCode.UNAVAILABLE


def test_a_cancelled_call_still_reports_its_confirmation_until_forgotten() -> None:
    core = ProtocolCore(now=0)
    request_id, _ = core.request("slow")
    assert decode_message(core.cancel(request_id, "caller cancelled") or b"") == Cancel(1, "caller cancelled")
    assert core.cancel(request_id, "again") is None  # a cancel is sent once
    events = feed(core, frames(Error(1, "CANCELLED", "caller cancelled")))
    assert isinstance(events[0], ErrorReceived) and events[0].error.code == ErrorCode.CANCELLED
    second, _ = core.request("slow")
    core.cancel(second, "bye")
    core.forget(second)
    assert feed(core, frames(Error(2, "CANCELLED", "bye"))) == []


def test_credit_as_producer() -> None:
    core = ProtocolCore(now=0)
    feed(core, frames(Request(1, "count", window=1)))
    core.send_item(1, 0)
    with pytest.raises(SpearError) as info:
        core.send_item(1, 1)
    assert info.value.code == ErrorCode.RESOURCE_EXHAUSTED
    assert feed(core, frames(Credit(1, 2))) == [CreditReceived(1, 2)]
    assert core.credit(1) == 2
    assert core.items_sent(1) == 1
    assert feed(core, frames(Credit(5, 1))) == []  # for a request not served: ignored
    with pytest.raises(SpearError) as info:
        core.send_item(5, 1)
    assert info.value.code == ErrorCode.FAILED_PRECONDITION
    feed(core, frames(Request(2, "unary")))
    assert feed(core, frames(Credit(2, 1))) == []
    with pytest.raises(SpearError, match="is not a stream"):
        core.send_item(2, 1)


def test_pings_are_answered_and_pongs_absorbed(bytewise: bool) -> None:
    core = ProtocolCore(now=0)
    assert feed(core, frames(Ping(3, b"p"), Pong(1)), bytewise=bytewise) == []
    assert core.has_data_to_send
    assert sent(core) == [Pong(3, b"p")]
    assert not core.has_data_to_send


def test_heartbeat_pings_on_interval_and_declares_a_silent_peer_dead() -> None:
    core = ProtocolCore(now=100.0, heartbeat_interval=1.0, heartbeat_timeout=3.0)
    assert core.next_deadline() == 101.0
    assert core.check_heartbeat(101.0) is None
    assert sent(core) == [Ping(1)]
    feed(core, frames(Pong(1)), now=102.5)  # anything received is a sign of life
    assert core.check_heartbeat(105.0) is None
    core.request("waiting")
    event = core.check_heartbeat(105.5)
    assert isinstance(event, ConnectionClosed) and event.failed == [1]
    assert "heartbeat timeout" in event.error.message
    assert core.check_heartbeat(200.0) is None  # reported once


@pytest.mark.parametrize(
    ("data", "code", "match"),
    [
        (frames(Goodbye("done")), ErrorCode.UNAVAILABLE, "peer said goodbye: done"),
        (frames(Error(None, "UNAUTHENTICATED", "go away")), ErrorCode.UNAUTHENTICATED, "peer reported: go away"),
        (CLOSE_FRAME, ErrorCode.UNAVAILABLE, "peer closed the connection"),
    ],
)
def test_the_peer_closing(data: bytes, code: ErrorCode, match: str) -> None:
    core = ProtocolCore(now=0)
    core.request("waiting")
    events = feed(core, data, bytewise=True)
    assert len(events) == 1 and isinstance(events[0], ConnectionClosed)
    assert events[0].error.code == code and match in events[0].error.message
    assert events[0].failed == [1]
    assert feed(core, frames(Request(1, "m"))) == []  # nothing after the close


def test_eof_after_bodies_reports_the_bodies_first() -> None:
    core = ProtocolCore(now=0)
    core.receive_data(frames(Request(1, "m")), 0)
    core.receive_data(b"", 0)
    assert isinstance(core.next_event(), RequestReceived)
    assert isinstance(core.next_event(), ConnectionClosed)
    assert core.next_event() is None


def test_whole_bodies_as_from_a_websocket() -> None:
    core = ProtocolCore(now=0)
    core.receive_body(encode_message(Request(1, "m")), 0)
    core.receive_body(None, 0)
    assert isinstance(core.next_event(), RequestReceived)
    assert isinstance(core.next_event(), ConnectionClosed)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"\x00" * 16, "frame of 16 bytes exceeds the maximum of 8"),
        (encode_frame(b"\xc1"), "invalid msgpack"),
        (encode_frame(b"\x91" * 1025 + b"\x01"), "nesting deeper than 1024 levels"),
        (CLOSE_FRAME + b"x", "data received after the close frame"),
    ],
)
def test_bad_bytes_close_with_a_protocol_error(data: bytes, match: str) -> None:
    core = ProtocolCore(now=0, max_frame_size=8 if data.startswith(b"\x10") else 1 << 20)
    events = feed(core, data, bytewise=True)
    assert isinstance(events[-1], ConnectionClosed)
    if data.startswith(CLOSE_FRAME):
        return  # the close frame closed it first
    assert match in fatal(core).message


def test_a_framing_error_after_good_frames_comes_after_their_events() -> None:
    core = ProtocolCore(now=0, max_frame_size=64)
    events = feed(core, frames(Request(1, "m")) + b"\xff" * 8)
    assert isinstance(events[0], RequestReceived) and isinstance(events[1], ConnectionClosed)


def test_local_close_goodbye_and_loss() -> None:
    core = ProtocolCore(now=0)
    core.request("m")
    body, event = core.goodbye("done")
    assert decode_message(body or b"") == Goodbye("done")
    assert isinstance(event, ConnectionClosed) and event.failed == [1]
    assert core.goodbye("again") == (None, None)
    assert core.lost(SpearError(ErrorCode.UNAVAILABLE, "x")) is None
    assert core.protocol_error(ProtocolError("x")) is None
    other = ProtocolCore(now=0)
    lost = other.lost(SpearError(ErrorCode.UNAVAILABLE, "reset"))
    assert isinstance(lost, ConnectionClosed) and lost.error.message == "reset"
    feed(other, frames(Request(1, "m")))
    assert other.respond(1) is None and other.fail(1, SpearError(ErrorCode.INTERNAL, "x")) is None


def test_an_answer_that_cannot_be_sent_can_still_be_failed() -> None:
    core = ProtocolCore(now=0, peer_max_frame_size=MIN_FRAME_SIZE)
    feed(core, frames(Request(1, "m")))
    with pytest.raises(SpearError) as info:
        core.respond(1, "x" * 5000)
    assert info.value.code == ErrorCode.RESOURCE_EXHAUSTED
    # the details cannot be sent either: code and message still are
    answer = decode_message(core.fail(1, SpearError(ErrorCode.INTERNAL, "boom", {"blob": "y" * 5000})) or b"")
    assert isinstance(answer, Error) and answer.code == "INTERNAL" and answer.details == {}


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (Welcome(), "expected hello, got welcome"),
        (Hello(version=2), "peer speaks protocol version 2, we speak 1"),
        (Hello(max_frame_size=100), "max_frame_size 100 is below the minimum of 1024"),
    ],
)
def test_hello_rules(message: Message, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        check_hello(message)


def test_hello_may_announce_its_max_frame_size() -> None:
    hello = decode_message(encode_message(Hello(max_frame_size=4096)))
    assert check_hello(hello).max_frame_size == 4096
    assert check_hello(decode_message(encode_message(Hello()))).max_frame_size is None


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (Hello(), "expected welcome, got hello"),
        (Welcome(version=3), "peer speaks protocol version 3"),
        (Welcome(max_frame_size=10), "below the minimum"),
    ],
)
def test_welcome_rules(message: Message, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        check_welcome(message)


def test_a_refusal_instead_of_a_welcome_is_raised() -> None:
    with pytest.raises(SpearError) as info:
        check_welcome(Error(None, "UNAUTHENTICATED", "bad secret"))
    assert info.value.code == ErrorCode.UNAUTHENTICATED
    assert check_welcome(Welcome()).version == 1


def test_map_keys_of_scalar_types_are_allowed_containers_are_not() -> None:
    core = ProtocolCore(now=0)
    events = feed(core, frames(Request(1, "m", {1: "int", None: "nil", b"b": "bin"})))
    assert events == [RequestReceived(1, "m", {1: "int", None: "nil", b"b": "bin"}, None, None)]
    events = feed(core, encode_frame(b"\x83\xa4type\xa7request\xa2id\x02\x81\x91\x01\x01"))
    assert isinstance(events[-1], ConnectionClosed)
    assert "a map key is an array or a map" in fatal(core).message


def test_64_bit_ids_and_values() -> None:
    core = ProtocolCore(now=0)
    big = 2**64 - 1
    events = feed(core, frames(Request(big, "m", [big, -(2**63)])))
    assert events == [RequestReceived(big, "m", [big, -(2**63)], None, None)]


def test_event_equality_and_repr() -> None:
    event: Any = RequestReceived(1, "m", None, None, None)
    assert "RequestReceived(id=1" in repr(event)
    assert event != ResponseReceived(1, None)


def test_one_body_in_one_event_out() -> None:
    core = ProtocolCore(now=0)
    request_id, _ = core.request("m")
    assert core.event_for(encode_message(Response(request_id, "r")), 1.0) == ResponseReceived(1, "r")
    assert core.event_for(encode_message(Ping(1)), 2.0) is None
    assert sent(core) == [Pong(1)]
    assert core.next_deadline() == min(5.0, 2.0 + 15.0)
    # with bodies still queued, the new one waits its turn
    core.receive_body(encode_message(Request(1, "first")), 3.0)
    assert core.event_for(encode_message(Request(2, "second")), 3.0) == RequestReceived(1, "first", None, None, None)
    assert core.next_event() == RequestReceived(2, "second", None, None, None)
    event = core.event_for(b"\xc1", 4.0)
    assert isinstance(event, ConnectionClosed) and "invalid msgpack" in fatal(core).message
    assert core.event_for(encode_message(Request(3, "late")), 5.0) is None


def test_stream_answers_for_a_forgotten_or_cancelled_consumer_are_ignored() -> None:
    core = ProtocolCore(now=0)
    request_id, _ = core.request("count", window=4)
    core.cancel(request_id, "left")
    assert core.item_taken(request_id) is None  # no credit for a stream being cancelled
    core.withdraw(request_id)
    assert feed(core, frames(StreamItem(1, 0, "x"), StreamEnd(1, 1))) == []
    assert core.item_taken(request_id) is None

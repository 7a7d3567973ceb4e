"""Two protocol cores talking through byte pipes cut at random points (hypothesis).

Each side calls (unary and stream), serves, answers, fails, cancels, consumes and
forgets at random; bytes cross in chunks of any size. Invariants: every request gets
exactly one terminal answer on the wire (or the link died), a caller sees at most
one terminal event per request and exactly one for every request it still waits for,
credit is never negative on either side, and a cancel never makes a second answer.
"""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from spear_actors.errors import ErrorCode, SpearError
from spear_actors.protocol.core import (
    CancelReceived,
    ConnectionClosed,
    CreditReceived,
    ErrorReceived,
    ItemReceived,
    ProtocolCore,
    RequestReceived,
    ResponseReceived,
)
from spear_actors.protocol.framing import encode_frame
from spear_actors.protocol.messages import Error, Response, StreamEnd, decode_message

_TERMINAL = (Response, StreamEnd, Error)


class _Side:
    def __init__(self) -> None:
        self.core = ProtocolCore(now=0)
        self.wire = bytearray()  # bytes on their way to the other side
        self.calls: dict[int, bool] = {}  # our requests still awaited -> is stream
        self.terminal_events: dict[int, int] = {}
        self.items: dict[int, int] = {}  # stream id -> items received, not yet taken
        self.served: list[int] = []  # peer requests we have not answered
        self.answered: list[int] = []  # peer requests we have answered
        self.streams_served: set[int] = set()
        self.answers_sent: dict[int, int] = {}  # peer request id -> terminal bodies we sent
        self.received_requests: set[int] = set()
        self.closed = False

    def send(self, body: bytes | None) -> None:
        if body is None:
            return
        message = decode_message(body)
        if isinstance(message, _TERMINAL) and message.id is not None and message.id in self.received_requests:
            self.answers_sent[message.id] = self.answers_sent.get(message.id, 0) + 1
        self.wire += encode_frame(body)

    def flush(self) -> None:
        for body in self.core.data_to_send():
            self.send(body)


class TwoCores(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sides = (_Side(), _Side())

    # -- calling -----------------------------------------------------------------
    @rule(
        who=st.integers(0, 1), window=st.one_of(st.none(), st.integers(0, 3)), params=st.integers(-(2**63), 2**64 - 1)
    )
    def call(self, who: int, window: int | None, params: int) -> None:
        side = self.sides[who]
        if side.core.closed:
            return
        request_id, body = side.core.request("m", params, window=window)
        side.calls[request_id] = window is not None
        side.send(body)

    @rule(who=st.integers(0, 1), pick=st.integers(0, 1000), forget=st.booleans())
    def cancel(self, who: int, pick: int, forget: bool) -> None:
        side = self.sides[who]
        if not side.calls:
            return
        request_id = sorted(side.calls)[pick % len(side.calls)]
        side.send(side.core.cancel(request_id, "enough"))
        if forget:
            side.core.forget(request_id)
            del side.calls[request_id]
            side.items.pop(request_id, None)

    @rule(who=st.integers(0, 1))
    def take_item(self, who: int) -> None:
        side = self.sides[who]
        for request_id, count in side.items.items():
            if count:
                side.items[request_id] -= 1
                side.send(side.core.item_taken(request_id))
                return

    # -- serving -----------------------------------------------------------------
    @rule(who=st.integers(0, 1), pick=st.integers(0, 1000), how=st.sampled_from(["respond", "fail", "item"]))
    def answer(self, who: int, pick: int, how: str) -> None:
        side = self.sides[who]
        if not side.served:
            return
        request_id = side.served[pick % len(side.served)]
        if how == "item":
            if request_id in side.streams_served:
                try:  # with or without credit: the core refuses an item over credit
                    side.send(side.core.send_item(request_id, "x"))
                except SpearError as exc:
                    assert exc.code == ErrorCode.RESOURCE_EXHAUSTED and side.core.credit(request_id) == 0
            return
        if how == "respond":
            body = side.core.respond(request_id, "ok")
        else:
            body = side.core.fail(request_id, SpearError(ErrorCode.CANCELLED, "stop"))
        side.served.remove(request_id)
        side.answered.append(request_id)
        side.send(body)

    @rule()
    def answer_again(self) -> None:
        """Handlers that answer twice (or after a cancel's answer): the core drops it."""
        for side in self.sides:
            for request_id in side.answered:
                side.send(side.core.respond(request_id, "again"))
                side.send(side.core.fail(request_id, SpearError(ErrorCode.INTERNAL, "again")))

    # -- the wire ------------------------------------------------------------------
    @rule(who=st.integers(0, 1), size=st.integers(1, 200))
    def deliver(self, who: int, size: int) -> None:
        sender, receiver = self.sides[who], self.sides[1 - who]
        chunk = bytes(sender.wire[:size])
        del sender.wire[:size]
        if chunk:
            self._receive(receiver, chunk)

    def _receive(self, side: _Side, data: bytes) -> None:
        side.core.receive_data(data, 0)
        while (event := side.core.next_event()) is not None:
            if isinstance(event, RequestReceived):
                side.received_requests.add(event.id)
                side.served.append(event.id)
                if event.window is not None:
                    side.streams_served.add(event.id)
            elif isinstance(event, (ResponseReceived, ErrorReceived)):
                side.terminal_events[event.id] = side.terminal_events.get(event.id, 0) + 1
                assert event.id in side.calls, f"answer to {event.id}, which nobody waits for"
                del side.calls[event.id]
                side.items.pop(event.id, None)
            elif isinstance(event, ItemReceived):
                assert side.calls.get(event.id), "item for a call that is not a stream"
                side.items[event.id] = side.items.get(event.id, 0) + 1
            elif isinstance(event, CancelReceived):
                assert event.id in side.served
            elif isinstance(event, CreditReceived):
                assert event.id in side.streams_served
            elif isinstance(event, ConnectionClosed):
                side.closed = True
        side.flush()

    # -- invariants -----------------------------------------------------------------
    @invariant()
    def at_most_one_terminal_answer(self) -> None:
        for side in self.sides:
            assert all(n == 1 for n in side.terminal_events.values())
            assert all(n == 1 for n in side.answers_sent.values())

    @invariant()
    def credit_is_never_negative(self) -> None:
        for side in self.sides:
            assert all(entry.credit >= 0 for entry in side.core.pending.values())
            assert all(entry.credit >= 0 for entry in side.core.serving.values())

    @invariant()
    def no_protocol_error_between_correct_peers(self) -> None:
        assert not any(side.closed for side in self.sides)

    @rule()
    def settle(self) -> None:
        """Answer everything, let every byte across: each awaited call is answered once."""
        for _ in range(50):
            for who, side in enumerate(self.sides):
                while side.served:
                    request_id = side.served.pop()
                    side.answered.append(request_id)
                    side.send(side.core.respond(request_id, "end"))
                for request_id, count in list(side.items.items()):
                    for _ in range(count):
                        side.send(side.core.item_taken(request_id))
                    side.items[request_id] = 0
                other = self.sides[1 - who]
                if side.wire:
                    data = bytes(side.wire)
                    side.wire.clear()
                    self._receive(other, data)
            if not any(s.wire or s.served for s in self.sides):
                break
        for side in self.sides:
            assert side.calls == {}, f"calls left without an answer: {side.calls}"
            for request_id in side.received_requests:
                assert side.answers_sent.get(request_id) == 1


TwoCores.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_two_cores = TwoCores.TestCase


def test_a_stream_with_zero_window_waits_for_credit() -> None:
    caller, callee = ProtocolCore(now=0), ProtocolCore(now=0)
    _, body = caller.request("count", window=0)
    callee.receive_data(encode_frame(body), 0)
    event: Any = callee.next_event()
    assert isinstance(event, RequestReceived) and callee.credit(event.id) == 0

"""The agent's reader, seen from the node's side of the link (a real agent process,
the node played by hand):

* what one read brings is handed on in order, also after a call running on the
  reader thread made it hand reading over (a cancel and a call read together with
  the long call are served by the successor);
* pings are answered while a function runs on the reader thread;
* answers written by the reader and by worker threads at the same time keep their
  frames whole and their order (items of a stream in sequence, one terminal answer
  per call);
* a function sees its own call's context, logs and cancel flag, never the previous
  call's, on the reader thread as on the asyncio loop.
"""

from __future__ import annotations

from pathlib import Path

import trio

from spear_actors.errors import ErrorCode
from spear_actors.protocol.messages import Cancel, Error, Message, Ping, Pong, Request, Response, StreamEnd, StreamItem

from .agent_processes import HandNode, hand_node

CONTEXT_AGENT = Path(__file__).resolve().parent / "context_agent.py"


def execute(request_id: int, function: str, params: object = None, window: int | None = None) -> Request:
    return Request(request_id, "execute", {"function": function, "params": params}, window=window)


async def answers_until(
    node: HandNode, done: set[int], pongs: frozenset[int] = frozenset()
) -> tuple[dict[int, Message], list[Message]]:
    """Messages from the agent until every id in *done* has its terminal answer and
    every ping in *pongs* its pong: the terminal answers by id (a second one for an
    id fails), and everything in order."""
    terminal: dict[int, Message] = {}
    seen: list[Message] = []
    ponged: set[int] = set()
    while not (done <= terminal.keys() and pongs <= ponged):
        message = await node.receive()
        seen.append(message)
        if isinstance(message, Pong):
            ponged.add(message.seq)
        if isinstance(message, Response | Error | StreamEnd):
            assert message.id is not None
            assert message.id not in terminal, f"a second answer to {message.id}"
            terminal[message.id] = message
    return terminal, seen


async def test_events_read_with_a_long_inline_call_are_served_after_the_hand_over(tmp_path: Path) -> None:
    async with hand_node(tmp_path) as node:
        # warm: echo has run on the reader thread; sleep never has, so it starts there too
        await node.send(execute(1, "echo", {"warm": True}))
        with trio.fail_after(30):
            first, _ = await answers_until(node, {1})
        assert isinstance(first[1], Response)
        # One write: the agent reads all four together, runs 2 on its reader thread
        # (60 s unless cancelled) and must still serve the cancel, 4 and the ping.
        await node.send(execute(2, "sleep", [60]), Cancel(2, "enough"), execute(4, "echo", {"x": 4}), Ping(7))
        with trio.fail_after(30):  # without the hand-over: 60 s
            terminal, _ = await answers_until(node, {2, 4}, frozenset({7}))
        cancelled = terminal[2]
        assert isinstance(cancelled, Error) and cancelled.code == ErrorCode.CANCELLED.value
        echoed = terminal[4]
        assert isinstance(echoed, Response) and echoed.result["value"] == {"x": 4}
        # the abandoned sleep saw cancelled() and returned: its result is dropped, the
        # agent still serves (and answers 2 no more)
        await node.send(execute(5, "add", [2, 3]))
        with trio.fail_after(30):
            later, _ = await answers_until(node, {5})
        assert isinstance(later[5], Response) and later[5].result["value"] == 5


async def test_pings_are_answered_while_a_function_runs_on_the_reader_thread(tmp_path: Path) -> None:
    async with hand_node(tmp_path) as node:
        await node.send(execute(1, "sleep", [60]))  # never run before: on the reader thread
        await node.send(Ping(1))
        with trio.fail_after(30):  # the call has 60 s to go
            message = await node.receive()
        assert isinstance(message, Pong) and message.seq == 1
        await node.send(Cancel(1, "done"), Ping(2))
        with trio.fail_after(30):
            terminal, _ = await answers_until(node, {1}, frozenset({2}))
        assert isinstance(terminal[1], Error) and terminal[1].code == ErrorCode.CANCELLED.value


async def test_answers_from_the_reader_and_workers_keep_frames_and_order(tmp_path: Path) -> None:
    streams = range(1, 21)  # generators: each runs in a worker thread
    echoes = range(100, 400)  # plain functions: answered by the reader thread
    pings = frozenset(i for i in echoes if i % 50 == 0)
    async with hand_node(tmp_path) as node:
        requests: list[Message] = [execute(i, "count", [300], window=1000) for i in streams]
        for i in echoes:
            requests.append(execute(i, "echo", {"i": i, "pad": "p" * (i % 7) * 100}))
            if i in pings:
                requests.append(Ping(i))
        await node.send(*requests)
        with trio.fail_after(60):
            terminal, seen = await answers_until(node, set(streams) | set(echoes), pings)
    items: dict[int, list[int]] = {i: [] for i in streams}
    ended: set[int] = set()
    for message in seen:
        if isinstance(message, StreamItem):
            assert message.id not in ended, "an item after its stream's end"
            items[message.id].append(message.data)
        elif isinstance(message, StreamEnd):
            ended.add(message.id)
    for i in streams:
        assert items[i] == list(range(300))
        end = terminal[i]
        assert isinstance(end, StreamEnd) and end.seq == 300 and end.result["value"] == {"counted": 300}
    for i in echoes:
        answer = terminal[i]
        assert isinstance(answer, Response)
        assert answer.result == {"value": {"i": i, "pad": "p" * (i % 7) * 100}, "logs": []}
    assert sorted(message.seq for message in seen if isinstance(message, Pong)) == sorted(pings)


async def test_each_call_sees_its_own_context_logs_and_cancel_flag(tmp_path: Path) -> None:
    def call(request_id: int, function: str) -> Request:
        params = {
            "function": function,
            "params": [f"line {request_id}"],
            "execution_id": f"exec-{request_id}",
            "environment": {"N": str(request_id)},
            "headers": {"h": request_id},
        }
        return Request(request_id, "execute", params)

    async with hand_node(tmp_path, CONTEXT_AGENT) as node:
        for request_id, function in [(1, "note"), (2, "note"), (3, "anote"), (4, "note")]:
            await node.send(call(request_id, function))
            with trio.fail_after(30):
                terminal, _ = await answers_until(node, {request_id})
            answer = terminal[request_id]
            assert isinstance(answer, Response)
            assert answer.result == {
                "value": {
                    "context": {
                        "execution_id": f"exec-{request_id}",
                        "environment": {"N": str(request_id)},
                        "headers": {"h": request_id},
                    },
                    "cancelled": False,
                },
                "logs": [f"line {request_id}"],
            }

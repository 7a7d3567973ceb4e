"""The caller's own deadline in :class:`Node`: a SYNC caller whose execution is
routed but never answered (a stuck actor tree) is answered DEADLINE_EXCEEDED one
grace after the routed deadline, and the execution is cancelled. The node's manager
is played by the test, so nothing else can answer first."""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio
import trio.testing

from spear_actors.actors.mailbox import ActorRef
from spear_actors.actors.messages import CancelExecution, Invoke, ManagerMessage, Routed
from spear_actors.config import NodeConfig
from spear_actors.errors import ErrorCode, SpearError
from spear_actors.node_facade import Node


async def silent_manager(inbox: trio.MemoryReceiveChannel[ManagerMessage], seen: list[Any]) -> None:
    """Routes every Invoke (deadline 2 s on) and never answers its outcome."""
    async for message in inbox:
        seen.append((trio.current_time(), message))
        if isinstance(message, Invoke):
            assert message.outcome is not None
            deadline = math.inf if message.request.task_name == "forever" else trio.current_time() + 2
            message.reply.send(Routed("task-1", f"exec-{len(seen)}", deadline, message.outcome))


async def test_an_unanswered_call_ends_one_grace_after_its_deadline(autojump_clock: trio.abc.Clock) -> None:
    seen: list[Any] = []
    send, receive = trio.open_memory_channel[ManagerMessage](16)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(silent_manager, receive, seen)
        node = Node(NodeConfig(), ActorRef("manager", send), nursery)
        start = trio.current_time()
        with pytest.raises(SpearError) as info:
            await node.invoke("f", None, task_name="t")
        assert info.value.code is ErrorCode.DEADLINE_EXCEEDED
        assert info.value.details["execution_id"] == "exec-1"
        assert trio.current_time() - start == pytest.approx(3.0)  # deadline 2 s + grace 1 s
        await trio.testing.wait_all_tasks_blocked()
        [(_, cancel)] = [(t, m) for t, m in seen if isinstance(m, CancelExecution)]
        assert cancel.execution_id == "exec-1" and cancel.reason == "deadline exceeded"

        # many callers: each at its own deadline, from one timer
        ended: list[float] = []

        async def caller(delay: float) -> None:
            await trio.sleep(delay)
            began = trio.current_time()
            with pytest.raises(SpearError):
                await node.invoke("f", None, task_name="t")
            ended.append(trio.current_time() - began)

        async with trio.open_nursery() as callers:
            for i in range(50):
                callers.start_soon(caller, i * 0.1)
        assert ended == [pytest.approx(3.0)] * 50

        # a call with no deadline waits on; its caller leaving cancels it
        with trio.move_on_after(100):
            await node.invoke("f", None, task_name="forever")
        await trio.testing.wait_all_tasks_blocked()
        assert isinstance(seen[-1][1], CancelExecution) and seen[-1][1].reason == "caller went away"
        assert len(node._waits) == 0
        nursery.cancel_scope.cancel()

"""The task actor's reports of started executions: a call that ends within
STARTED_REPORT_AFTER is never reported (its start travels with its outcome, on the
slot's marks); longer ones are reported together, once, while they still run."""

from __future__ import annotations

import trio
import trio.testing

from spear_actors.actors.mailbox import ActorRef
from spear_actors.actors.messages import ExecutionsStarted, ManagerMessage, OutcomeSlot, Submit
from spear_actors.actors.task import STARTED_REPORT_AFTER, TaskActor, TaskDefinition
from spear_actors.model import ArtifactSpec, InstancePolicy
from spear_actors.runtimes.base import Call

from .inline_runtime import InlineRuntime


def definition() -> TaskDefinition:
    return TaskDefinition(
        task_id="t1",
        task_name="t",
        description="",
        artifact=ArtifactSpec(location="inline", artifact_type="inline"),
        artifact_path=None,
        artifact_digest="",
        policy=InstancePolicy(min_instances=1, max_instances=1, max_concurrency=8, idle_timeout_s=60.0, max_pending=50),
    )


async def test_only_calls_still_running_are_reported_and_in_one_message(autojump_clock: trio.abc.Clock) -> None:
    send, receive = trio.open_memory_channel[ManagerMessage](100)
    runtime = InlineRuntime()
    async with trio.open_nursery() as nursery:
        ref = await nursery.start(TaskActor(definition(), runtime, ActorRef("manager", send)).run)
        await trio.sleep(1)  # the instance (min_instances = 1) is up
        slots: dict[str, OutcomeSlot] = {}
        for execution_id, seconds in [("short", STARTED_REPORT_AFTER / 5), ("long-1", 1.0), ("long-2", 2.0)]:
            slots[execution_id] = OutcomeSlot()
            call = Call(execution_id, "sleep", seconds, timeout=100)
            ref.tell_nowait(Submit(call, slots[execution_id], trio.current_time() + 100))
        await slots["short"].wait()
        short = slots["short"]
        assert short.instance_id and short.started_at is not None  # its start, with its outcome
        await slots["long-2"].wait()
        nursery.cancel_scope.cancel()
    reports = [m for m in [*_drain(receive)] if isinstance(m, ExecutionsStarted)]
    assert len(reports) == 1
    [report] = reports
    assert sorted(execution_id for execution_id, _, _ in report.started) == ["long-1", "long-2"]
    for execution_id, instance_id, started_at in report.started:
        assert instance_id == slots[execution_id].instance_id
        assert started_at == slots[execution_id].started_at


def _drain(receive: trio.MemoryReceiveChannel[ManagerMessage]) -> list[ManagerMessage]:
    messages = []
    while True:
        try:
            messages.append(receive.receive_nowait())
        except trio.WouldBlock:
            return messages

"""The agent runs a plain function on its reader thread (no hand-off to a worker)
until it runs too long; then a new reader takes over, so the same agent keeps
reading: other calls are served and the long call can still be cancelled."""

from __future__ import annotations

from typing import Any

import trio

from spear_actors import Node, SpearError
from spear_actors.errors import ErrorCode

from ..conftest import agent_spec, until_running

POLICY = {"max_instances": 1, "max_concurrency": 4}


async def test_a_long_call_on_the_reader_hands_reading_over(node: Node) -> None:
    spec = agent_spec()
    # echo runs on the reader thread: the one instance is warm
    assert (await node.invoke("echo", {"x": 0}, task_name="inline", artifact_spec=spec, policy=POLICY))["result"] == {
        "x": 0
    }
    ended: list[Any] = []

    async def long_call() -> None:
        try:
            await node.invoke("sleep", {"seconds": 60}, task_name="inline", context={"execution_id": "exec-long"})
        except SpearError as exc:
            ended.append(exc.code)

    async with trio.open_nursery() as nursery:
        # sleep has never run: it starts on the reader thread too
        nursery.start_soon(long_call)
        await until_running(node, "exec-long")
        with trio.fail_after(30):  # without a new reader these would wait 60 s
            for i in range(20):
                response = await node.invoke("echo", {"i": i}, task_name="inline")
                assert response["result"] == {"i": i}
            assert (await node.get_execution("exec-long"))["status"] == "RUNNING"
            record = await node.cancel_execution("exec-long", reason="enough")
    assert record["status"] == "CANCELLED"
    assert ended == [ErrorCode.CANCELLED]
    # the function is now known to be slow: its calls go to a worker thread, and
    # the reader stays free (echo is answered while two sleeps run)
    async with trio.open_nursery() as nursery:
        for name in ("exec-s1", "exec-s2"):
            nursery.start_soon(
                lambda name=name: node.invoke(
                    "sleep", {"seconds": 0.2}, task_name="inline", context={"execution_id": name}
                )
            )
        await until_running(node, "exec-s2")
        with trio.fail_after(30):
            assert (await node.invoke("echo", {"y": 1}, task_name="inline"))["result"] == {"y": 1}

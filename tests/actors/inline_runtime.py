"""An in-process runtime for scheduler tests: instances are trio tasks, time is trio's.

It is a complete :class:`Runtime` (it is how a test drives the task and instance
actors under a MockClock), not a stand-in for the process runtime's behaviour.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from spear_actors.errors import ErrorCode, SpearError
from spear_actors.runtimes.base import Call, InstanceSpec, LogSink, Runtime, RuntimeInstance, StreamSink


class InlineInstance(RuntimeInstance):
    def __init__(self, runtime: InlineRuntime, instance_id: str) -> None:
        self.instance_id = instance_id
        self.runtime = runtime
        self.inflight = 0
        self.died = trio.Event()

    async def execute(self, call: Call, sink: StreamSink | None, log: LogSink) -> Any:
        self.inflight += 1
        self.runtime.max_inflight_seen = max(self.runtime.max_inflight_seen, self.inflight)
        try:
            with trio.move_on_after(call.timeout if call.timeout is not None else float("inf")) as scope:
                if call.function_name == "sleep":
                    await trio.sleep(call.params)
                    return {"slept": call.params, "instance": self.instance_id}
                if call.function_name == "fail":
                    raise SpearError(ErrorCode.FUNCTION_ERROR, "requested failure")
                raise SpearError(ErrorCode.NOT_FOUND, call.function_name)
            assert scope.cancelled_caught
            raise SpearError(ErrorCode.DEADLINE_EXCEEDED, "inline deadline")
        finally:
            self.inflight -= 1

    async def wait_failed(self) -> SpearError:
        await self.died.wait()
        return SpearError(ErrorCode.INSTANCE_FAILED, "killed by the test")


class InlineRuntime(Runtime):
    kind = "inline"

    def __init__(self, start_delay: float = 0.05, fail_starts: int = 0) -> None:
        self.start_delay = start_delay
        self.fail_starts = fail_starts
        self.live: dict[str, InlineInstance] = {}
        self.started = 0
        self.max_live_seen = 0
        self.max_inflight_seen = 0
        self._ids = itertools.count()

    @asynccontextmanager
    async def open_instance(self, spec: InstanceSpec) -> AsyncIterator[RuntimeInstance]:
        await trio.sleep(self.start_delay)
        self.started += 1
        if self.fail_starts > 0:
            self.fail_starts -= 1
            raise SpearError(ErrorCode.INSTANCE_FAILED, "inline start failure", {"stderr_tail": "boom"})
        instance = InlineInstance(self, spec.instance_id)
        self.live[spec.instance_id] = instance
        self.max_live_seen = max(self.max_live_seen, len(self.live))
        try:
            yield instance
        finally:
            del self.live[spec.instance_id]

    def kill_one(self, index: int) -> bool:
        if not self.live:
            return False
        victim = list(self.live.values())[index % len(self.live)]
        victim.died.set()
        return True

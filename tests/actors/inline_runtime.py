"""An in-process runtime for scheduler tests: instances are trio tasks, time is trio's.

It is a complete :class:`Runtime` (it is how a test drives the task and instance
actors under a MockClock), not a stand-in for the process runtime's behaviour.
With ``relaying=True`` its instances are relaying instances, as agent
instances are: each unary call runs in a task of the instance's own nursery (its
"agent") and reports its end by callback; the instance actor enforces the deadline.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from spear_actors.errors import ErrorCode, SpearError
from spear_actors.runtimes.base import (
    Call,
    EndSink,
    InstanceSpec,
    LogSink,
    Runtime,
    RuntimeInstance,
    StreamSink,
)


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


class InlineRelayed:
    """One relayed call: its "agent" side is a task of the instance's nursery."""

    def __init__(self, instance: RelayingInlineInstance, call: Call, on_end: EndSink) -> None:
        self.instance = instance
        self.call = call
        self.on_end: EndSink | None = on_end
        self.scope = trio.CancelScope()
        self.ended = trio.Event()
        self.given_up: list[str] = []

    async def run(self) -> None:
        instance = self.instance
        instance.inflight += 1
        instance.runtime.max_inflight_seen = max(instance.runtime.max_inflight_seen, instance.inflight)
        try:
            with self.scope:
                if self.call.function_name == "sleep":
                    await trio.sleep(self.call.params)  # no deadline here: the actor enforces it
                    self.end({"slept": self.call.params, "instance": instance.instance_id}, None)
                elif self.call.function_name == "fail":
                    self.end(None, SpearError(ErrorCode.FUNCTION_ERROR, "requested failure"))
                else:
                    self.end(None, SpearError(ErrorCode.NOT_FOUND, self.call.function_name))
            if self.scope.cancelled_caught:
                self.end(None, SpearError(ErrorCode.CANCELLED, "confirmed"))  # dropped if given up
        finally:
            instance.inflight -= 1
            instance.relayed.discard(self)
            self.ended.set()

    def end(self, result: Any, error: SpearError | None) -> None:
        on_end, self.on_end = self.on_end, None
        if on_end is not None:
            on_end(result, error)

    def give_up(self, reason: str) -> None:
        self.given_up.append(reason)
        self.on_end = None
        self.scope.cancel()

    async def cancel(self, reason: str) -> None:
        self.scope.cancel()
        await self.ended.wait()


class RelayingInlineInstance(InlineInstance):
    def __init__(self, runtime: InlineRuntime, instance_id: str, nursery: trio.Nursery) -> None:
        super().__init__(runtime, instance_id)
        self.nursery = nursery
        self.relayed: set[InlineRelayed] = set()
        self.calls = 0

    def can_relay(self) -> bool:
        return not self.died.is_set()

    async def relay_execute(self, call: Call, log: LogSink, on_end: EndSink) -> InlineRelayed | None:
        self.calls += 1
        if self.died.is_set():
            on_end(None, SpearError(ErrorCode.INSTANCE_FAILED, "killed by the test"))
            return None
        relayed = InlineRelayed(self, call, on_end)
        self.relayed.add(relayed)
        self.nursery.start_soon(relayed.run)
        return relayed

    def die(self) -> None:
        """The agent's link drops: every call in flight ends INSTANCE_FAILED."""
        self.died.set()
        for relayed in list(self.relayed):
            relayed.end(None, SpearError(ErrorCode.INSTANCE_FAILED, "killed by the test"))
            relayed.scope.cancel()


class InlineRuntime(Runtime):
    kind = "inline"

    def __init__(self, start_delay: float = 0.05, fail_starts: int = 0, *, relaying: bool = False) -> None:
        self.relaying = relaying
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
        async with trio.open_nursery() as agent:
            instance = (
                RelayingInlineInstance(self, spec.instance_id, agent)
                if self.relaying
                else InlineInstance(self, spec.instance_id)
            )
            self.live[spec.instance_id] = instance
            self.max_live_seen = max(self.max_live_seen, len(self.live))
            try:
                yield instance
            finally:
                del self.live[spec.instance_id]
                agent.cancel_scope.cancel()

    def kill_one(self, index: int) -> bool:
        if not self.live:
            return False
        victim = list(self.live.values())[index % len(self.live)]
        if isinstance(victim, RelayingInlineInstance):
            victim.die()
        else:
            victim.died.set()
        return True

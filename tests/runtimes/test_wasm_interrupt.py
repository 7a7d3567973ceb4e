"""Timeouts and cancellation of running modules, with the trio loop kept responsive.

These run on the real clock: the module runs on real worker threads and the
epoch ticker measures real time, so an autojump clock would only make the trio
side race ahead of them. Every wait is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio

from spear_actors import ErrorCode, SpearError
from spear_actors.runtimes.base import Call
from spear_actors.runtimes.wasm import WasmRuntime

from .wasm_helpers import expect_error, wasm_spec


def _drop(line: str) -> None:
    pass


@pytest.fixture
async def runtime(nursery: trio.Nursery, tmp_path: Path) -> WasmRuntime:
    runtime = WasmRuntime(tmp_path / "data", max_workers=4)
    await nursery.start(runtime.run)
    return runtime


async def wait_for_idle_workers(runtime: WasmRuntime, within: float) -> float:
    """Seconds until no worker thread is busy (the limiter is fully returned)."""
    started = time.monotonic()
    with trio.fail_after(within):
        while runtime.limiter.borrowed_tokens:
            await trio.sleep(0.005)
    return time.monotonic() - started


async def test_infinite_loop_ends_at_its_deadline_while_others_keep_flowing(runtime: WasmRuntime) -> None:
    completed = 0
    heartbeats = 0
    outcome: dict[str, Any] = {}

    async with (
        runtime.open_instance(wasm_spec("loop", abi="export")) as looping,
        runtime.open_instance(wasm_spec("add", abi="export")) as adding,
    ):

        async def spin() -> None:
            started = time.monotonic()
            try:
                await looping.execute(Call("spin", "spin", timeout=0.5), None, _drop)
            except SpearError as exc:
                outcome["error"] = exc
            outcome["elapsed"] = time.monotonic() - started

        async def add_forever() -> None:
            nonlocal completed
            while True:
                assert await adding.execute(Call("add", "add", [completed, 1]), None, _drop) == completed + 1
                completed += 1

        async def heartbeat() -> None:
            nonlocal heartbeats
            while True:
                await trio.sleep(0.01)
                heartbeats += 1

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(add_forever)
                nursery.start_soon(heartbeat)
                await spin()
                nursery.cancel_scope.cancel()

    assert outcome["error"].code is ErrorCode.DEADLINE_EXCEEDED
    assert "0.5s" in outcome["error"].message
    assert 0.45 <= outcome["elapsed"] < 1.5
    assert completed >= 20, completed  # another execution kept completing on the same runtime
    assert heartbeats >= 20, heartbeats  # and the trio loop kept ticking
    assert await wait_for_idle_workers(runtime, 1.0) < 0.5


async def test_wasi_command_obeys_the_artifact_timeout(runtime: WasmRuntime) -> None:
    spec = wasm_spec("loop", timeout_s=0.2)  # the call's own timeout is longer
    async with runtime.open_instance(spec) as instance:
        started = time.monotonic()
        await expect_error(ErrorCode.DEADLINE_EXCEEDED, instance.execute(Call("e", "run", timeout=30), None, _drop))
    assert 0.15 <= time.monotonic() - started < 1.0


async def test_cancel_interrupts_the_running_module(runtime: WasmRuntime) -> None:
    async with runtime.open_instance(wasm_spec("loop", abi="export")) as instance:
        with trio.move_on_after(0.2) as scope:
            await instance.execute(Call("e", "spin", timeout=60), None, _drop)
        assert scope.cancelled_caught
        # The worker thread stopped (no thread keeps burning CPU): its limiter token is back.
        assert await wait_for_idle_workers(runtime, 2.0) < 0.1


async def test_cancelled_warm_instance_gets_a_new_store(runtime: WasmRuntime) -> None:
    spec = wasm_spec(
        content=b"""(module (global $n (mut i32) (i32.const 0))
            (func (export "inc") (result i32) (global.set $n (i32.add (global.get $n) (i32.const 1))) (global.get $n))
            (func (export "spin") (loop $l (br $l))))""",
        abi="export",
        warm=True,
    )
    async with runtime.open_instance(spec) as instance:
        assert await instance.execute(Call("e", "inc"), None, _drop) == 1
        with trio.move_on_after(0.1):
            await instance.execute(Call("e", "spin", timeout=60), None, _drop)
        await wait_for_idle_workers(runtime, 2.0)
        assert await instance.execute(Call("e", "inc"), None, _drop) == 1


async def test_a_call_waiting_for_a_worker_can_be_cancelled(tmp_path: Path, nursery: trio.Nursery) -> None:
    runtime = WasmRuntime(None, max_workers=1)
    await nursery.start(runtime.run)
    async with (
        runtime.open_instance(wasm_spec("loop", abi="export")) as looping,
        runtime.open_instance(wasm_spec("add", abi="export")) as adding,
    ):
        async with trio.open_nursery() as inner:
            inner.start_soon(lambda: looping.execute(Call("e", "spin", timeout=0.3), None, _drop))
            await trio.sleep(0.05)
            with trio.move_on_after(0.05) as scope:  # the only worker is busy
                await adding.execute(Call("e", "add", [1, 2]), None, _drop)
            assert scope.cancelled_caught
            inner.cancel_scope.cancel()
        await wait_for_idle_workers(runtime, 2.0)
        assert await adding.execute(Call("e", "add", [1, 2]), None, _drop) == 3


async def test_many_concurrent_executions_share_the_workers(runtime: WasmRuntime) -> None:
    results: dict[int, Any] = {}
    async with runtime.open_instance(wasm_spec("echo")) as instance:

        async def one(index: int) -> None:
            results[index] = await instance.execute(Call(f"e{index}", "run", {"i": index}), None, _drop)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for index in range(64):
                    nursery.start_soon(one, index)
    assert results == {index: {"i": index} for index in range(64)}


async def test_cancel_during_a_stream_stops_the_module(runtime: WasmRuntime) -> None:
    received: list[Any] = []

    async def slow_sink(item: Any) -> None:
        received.append(item)
        await trio.sleep(0.05)  # the module waits for each item to be taken

    async with runtime.open_instance(wasm_spec("echo", input_format="raw")) as instance:
        with trio.move_on_after(0.2) as scope:
            await instance.execute(Call("e", "run", "z" * 64 * 100, timeout=60, stream=True), slow_sink, _drop)
        assert scope.cancelled_caught
        assert 1 <= len(received) < 100
        assert await wait_for_idle_workers(runtime, 2.0) < 0.2

"""WASM tasks end to end through a real node (``open_node`` / ``node.invoke``)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from spear_actors import ErrorCode, SpearError
from spear_actors.node import Node, open_node
from spear_actors.runtimes.wasm import WasmRuntime
from spear_actors.runtimes.wasm.cache import ModuleCache

from ..conftest import fast_config
from .wasm_helpers import FIXTURES, expect_error


def wasm(name: str, **config: Any) -> dict[str, Any]:
    """An artifact_spec map for the WAT fixture *name*."""
    return {"artifact_type": "wasm", "location": str(FIXTURES / f"{name}.wat"), "config": config}


@pytest.fixture
def runtimes(monkeypatch: pytest.MonkeyPatch) -> list[WasmRuntime]:
    """Every WasmRuntime the node under test creates (to look at its workers and cache)."""
    created: list[WasmRuntime] = []
    original = WasmRuntime.__init__

    def recording_init(self: WasmRuntime, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        created.append(self)

    monkeypatch.setattr(WasmRuntime, "__init__", recording_init)
    return created


async def workers_idle(runtimes: list[WasmRuntime]) -> None:
    """Wait (briefly) until the node's WASM runtime has no busy worker thread: a
    cancelled module really stopped instead of burning an abandoned thread."""
    [runtime] = runtimes
    with trio.fail_after(2):
        while runtime.limiter.borrowed_tokens:
            await trio.sleep(0.01)


@pytest.fixture
async def node(tmp_path: Path, runtimes: list[WasmRuntime]) -> AsyncIterator[Node]:
    async with open_node(fast_config(tmp_path)) as running:
        yield running


async def test_sync_invoke_of_an_exported_function(node: Node) -> None:
    response = await node.invoke("add", [2, 3], task_name="calc", artifact_spec=wasm("add", abi="export"))
    assert response["result"] == 5 and response["status"] == "COMPLETED"
    again = await node.invoke("add", [20, 22], task_id=response["task_id"])
    assert again["result"] == 42 and again["instance_id"] == response["instance_id"]


async def test_sync_invoke_of_a_wasi_command_with_logs(node: Node) -> None:
    echo = await node.invoke("run", {"a": [1, 2]}, task_name="echo", artifact_spec=wasm("echo"))
    assert echo["result"] == {"a": [1, 2]}
    logged = await node.invoke("run", None, task_name="log", artifact_spec=wasm("log"))
    assert logged["result"] == {"ok": True}
    assert logged["logs"] == ["line one", "line two", "no newline"]


async def test_inline_module_content(node: Node) -> None:
    spec = {
        "artifact_type": "wasm",
        "content": b'(module (func (export "seven") (result i32) i32.const 7))',
        "config": {"abi": "export"},
    }
    assert (await node.invoke("seven", None, task_name="inline", artifact_spec=spec))["result"] == 7


async def test_function_errors_reach_the_caller(node: Node) -> None:
    error = await expect_error(
        ErrorCode.FUNCTION_ERROR, node.invoke("run", None, task_name="f", artifact_spec=wasm("fail"))
    )
    assert error.details["exit_code"] == 3
    assert "error: nothing to do" in error.details["stderr_tail"]
    fuel = wasm("burn", abi="export", fuel=1000)
    error = await expect_error(
        ErrorCode.RESOURCE_EXHAUSTED, node.invoke("burn", [10**9], task_name="b", artifact_spec=fuel)
    )
    assert "fuel" in error.message


async def test_stream_mode_delivers_stdout_chunks(node: Node) -> None:
    text = "".join(f"chunk {i:02d}\n" for i in range(20))  # 180 bytes, written 64 at a time
    spec = wasm("echo", input_format="raw")
    async with node.stream("run", text, task_name="stream", artifact_spec=spec) as stream:
        items = [item async for item in stream]
    assert len(items) == 3 and "".join(items) == text
    assert stream.response is not None and stream.response["status"] == "COMPLETED"


async def test_async_mode_and_cancel_execution(node: Node, runtimes: list[WasmRuntime]) -> None:
    accepted = await node.invoke(
        "add", [4, 5], task_name="calc", artifact_spec=wasm("add", abi="export"), execution_mode="ASYNC"
    )
    record = await node.wait_execution(accepted["execution_id"], timeout=5)
    assert record["status"] == "COMPLETED" and record["result"] == 9

    spinning = await node.invoke(
        "spin",
        None,
        task_name="loop",
        artifact_spec=wasm("loop", abi="export"),
        execution_mode="ASYNC",
        context={"timeout_ms": 60_000},
    )
    with trio.fail_after(5):
        while (await node.get_execution(spinning["execution_id"]))["status"] != "RUNNING":
            await trio.sleep(0.01)
        record = await node.cancel_execution(spinning["execution_id"])
    assert record["status"] == "CANCELLED"
    await workers_idle(runtimes)
    # The task still serves the next call (which times out, as a loop does).
    await expect_error(
        ErrorCode.DEADLINE_EXCEEDED, node.invoke("spin", None, task_name="loop", context={"timeout_ms": 100})
    )


async def test_infinite_loop_times_out_while_the_node_keeps_serving(node: Node, runtimes: list[WasmRuntime]) -> None:
    await node.invoke("add", [0, 0], task_name="calc", artifact_spec=wasm("add", abi="export"))
    completed = health_checks = 0
    outcome: dict[str, Any] = {}

    async def spin() -> None:
        started = time.monotonic()
        try:
            await node.invoke(
                "spin", None, task_name="loop", artifact_spec=wasm("loop", abi="export"), context={"timeout_ms": 500}
            )
        except SpearError as exc:
            outcome["error"] = exc
        outcome["elapsed"] = time.monotonic() - started

    async def keep_invoking() -> None:
        nonlocal completed
        while True:
            assert (await node.invoke("add", [completed, 1], task_name="calc"))["result"] == completed + 1
            completed += 1

    async def keep_checking_health() -> None:
        nonlocal health_checks
        while True:
            assert (await node.get_health())["node_id"]
            health_checks += 1
            await trio.sleep(0.01)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_invoking)
            nursery.start_soon(keep_checking_health)
            await spin()
            nursery.cancel_scope.cancel()
    assert outcome["error"].code is ErrorCode.DEADLINE_EXCEEDED
    assert 0.45 <= outcome["elapsed"] < 2.0
    assert completed >= 10 and health_checks >= 10, (completed, health_checks)
    await workers_idle(runtimes)


async def test_a_cancelled_caller_stops_the_module(node: Node, runtimes: list[WasmRuntime]) -> None:
    with trio.move_on_after(0.3) as scope:
        await node.invoke(
            "spin", None, task_name="loop", artifact_spec=wasm("loop", abi="export"), context={"timeout_ms": 60_000}
        )
    assert scope.cancelled_caught
    await workers_idle(runtimes)


async def test_compiled_modules_survive_a_node_restart(
    tmp_path: Path, runtimes: list[WasmRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    compiles = 0
    original = ModuleCache._compile

    def counting_compile(self: ModuleCache, source: bytes) -> Any:
        nonlocal compiles
        compiles += 1
        return original(self, source)

    monkeypatch.setattr(ModuleCache, "_compile", counting_compile)
    for _ in range(2):
        async with open_node(fast_config(tmp_path)) as node:
            response = await node.invoke("add", [1, 2], task_name="calc", artifact_spec=wasm("add", abi="export"))
            assert response["result"] == 3
    assert compiles == 1
    assert [(r.stats.compiled, r.stats.disk_hits) for r in runtimes] == [(1, 0), (0, 1)]

"""Compiled modules: once per artifact in memory, and on disk across runtime restarts."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import trio
import wasmtime

from spear_actors.runtimes.wasm import WasmRuntime

from .wasm_helpers import call, wasm_spec

EXPORT: dict[str, Any] = {"abi": "export"}


async def add_on_new_runtime(data_dir: Path | None) -> WasmRuntime:
    """Start a runtime on *data_dir*, run add(2, 3) once, stop the runtime."""
    runtime = WasmRuntime(data_dir)
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        assert await call(runtime, wasm_spec("add", **EXPORT), "add", [2, 3]) == 5
        nursery.cancel_scope.cancel()
    return runtime


def cache_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "wasm-cache").glob("*.cwasm"))


async def test_a_module_is_compiled_once_per_artifact(nursery: trio.Nursery) -> None:
    runtime = WasmRuntime(None)
    await nursery.start(runtime.run)
    for _ in range(3):
        assert await call(runtime, wasm_spec("add", **EXPORT), "add", [1, 1]) == 2
    # The same bytes inline, without a digest hint, find the same module.
    inline = wasm_spec(content=wasm_spec("add").artifact_path.read_bytes(), **EXPORT)  # type: ignore[union-attr]
    inline = type(inline)(inline.instance_id, inline.task_id, inline.task_name, inline.artifact, None, "")
    assert await call(runtime, inline, "add", [1, 1]) == 2
    assert runtime.stats.compiled == 1
    assert runtime.stats.memory_hits == 3


async def test_the_disk_cache_survives_a_runtime_restart(tmp_path: Path) -> None:
    first = await add_on_new_runtime(tmp_path)
    assert (first.stats.compiled, first.stats.disk_hits) == (1, 0)
    assert len(cache_files(tmp_path)) == 1
    second = await add_on_new_runtime(tmp_path)
    assert (second.stats.compiled, second.stats.disk_hits, second.stats.disk_errors) == (0, 1, 0)


async def test_a_corrupt_cache_file_is_recompiled_and_rewritten(tmp_path: Path) -> None:
    await add_on_new_runtime(tmp_path)
    [path] = cache_files(tmp_path)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one flipped bit deep in the compiled code
    path.write_bytes(bytes(blob))
    recovering = await add_on_new_runtime(tmp_path)
    assert (recovering.stats.compiled, recovering.stats.disk_hits, recovering.stats.disk_errors) == (1, 0, 1)
    path.write_bytes(b"short")  # truncated
    assert (await add_on_new_runtime(tmp_path)).stats.disk_errors == 1
    healed = await add_on_new_runtime(tmp_path)  # the rewritten file loads again
    assert (healed.stats.compiled, healed.stats.disk_hits) == (0, 1)


async def test_a_cache_file_from_another_engine_config_is_recompiled(tmp_path: Path) -> None:
    await add_on_new_runtime(tmp_path)
    [path] = cache_files(tmp_path)
    # Well-formed and checksummed, but compiled by an engine without fuel metering:
    # wasmtime itself must refuse it.
    other = wasmtime.Module(wasmtime.Engine(), wasm_spec("add").artifact_path.read_bytes().decode())  # type: ignore[union-attr]
    payload = bytes(other.serialize())
    path.write_bytes(b"SPEARCW1" + hashlib.sha256(payload).digest() + payload)
    runtime = await add_on_new_runtime(tmp_path)
    assert (runtime.stats.compiled, runtime.stats.disk_errors) == (1, 1)


async def test_without_a_data_dir_nothing_is_written(tmp_path: Path) -> None:
    runtime = await add_on_new_runtime(None)
    assert runtime.stats.compiled == 1
    assert not list(tmp_path.rglob("*.cwasm"))

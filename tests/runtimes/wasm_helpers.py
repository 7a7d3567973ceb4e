"""Shared helpers of the WASM runtime tests: specs for the WAT fixtures, one-call helpers."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from spear_actors import ErrorCode, SpearError
from spear_actors.model import ArtifactSpec
from spear_actors.runtimes.base import Call, InstanceSpec, StreamSink
from spear_actors.runtimes.wasm import WasmRuntime

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "wasm"


def wasm_spec(name: str | None = None, *, content: bytes | None = None, **config: Any) -> InstanceSpec:
    """An instance spec for the fixture *name* (``add`` → add.wat) or inline *content*."""
    path = None if name is None else FIXTURES / f"{name}.wat"
    artifact = ArtifactSpec(
        artifact_type="wasm", location="" if path is None else str(path), config=config, content=content
    )
    data = content if path is None else path.read_bytes()
    digest = hashlib.sha256(data or b"").hexdigest()
    return InstanceSpec(f"inst-{name}", f"task-{name}", name or "inline", artifact, path, digest)


async def call(
    runtime: WasmRuntime,
    spec: InstanceSpec,
    function: str,
    params: Any = None,
    *,
    logs: list[str] | None = None,
    sink: StreamSink | None = None,
    timeout: float | None = None,
) -> Any:
    """Open an instance of *spec*, run one call, close it."""
    async with runtime.open_instance(spec) as instance:
        request = Call("exec-1", function, params, timeout=timeout, stream=sink is not None)
        return await instance.execute(request, sink, (logs if logs is not None else []).append)


async def expect_error(code: ErrorCode, awaitable: Any) -> SpearError:
    """Await *awaitable* and return the SpearError it raised, which must carry *code*."""
    with pytest.raises(SpearError) as info:
        await awaitable
    assert info.value.code is code, info.value
    return info.value

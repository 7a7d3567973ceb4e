"""The C example (examples/c/wordcount.c) built to wasm32-wasi by `make wasm-examples`.

Skipped when the toolchain (clang, lld's wasm-ld, wasi-libc) is not installed;
.ci/run installs it (Debian: clang lld wasi-libc libclang-rt-dev-wasm32).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio

from spear_actors import ErrorCode
from spear_actors.model import ArtifactSpec
from spear_actors.runtimes.base import InstanceSpec
from spear_actors.runtimes.wasm import WasmRuntime

from .wasm_helpers import call, expect_error

ROOT = Path(__file__).resolve().parent.parent.parent
SYSROOT_HEADERS = [Path("/usr/share/wasi-sysroot/include"), Path("/usr/include/wasm32-wasi")]


def _missing_toolchain() -> str | None:
    for tool in ("make", "clang", "wasm-ld"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (needs clang, lld and wasi-libc)"
    if not any(path.is_dir() for path in SYSROOT_HEADERS):
        return "wasi-libc is not installed (no wasm32-wasi sysroot)"
    return None


pytestmark = pytest.mark.skipif(_missing_toolchain() is not None, reason=str(_missing_toolchain()))


@pytest.fixture
async def wordcount(tmp_path: Path) -> Path:
    """examples/c/wordcount.c compiled through the Makefile target, into tmp_path."""
    out = tmp_path / "build"
    result = await trio.run_process(
        ["make", "-s", "wasm-examples", f"WASM_OUT={out}"], cwd=ROOT, capture_stdout=True, capture_stderr=True
    )
    assert result.returncode == 0, result.stderr.decode()
    return out / "wordcount.wasm"


@pytest.fixture
async def runtime(nursery: trio.Nursery, tmp_path: Path) -> WasmRuntime:
    runtime = WasmRuntime(tmp_path / "data")
    await nursery.start(runtime.run)
    return runtime


def spec(path: Path, **config: object) -> InstanceSpec:
    artifact = ArtifactSpec(artifact_type="wasm", location=str(path), config={"input_format": "raw", **config})
    return InstanceSpec("inst-c", "task-c", "wordcount", artifact, path)


async def test_c_word_count(runtime: WasmRuntime, wordcount: Path) -> None:
    logs: list[str] = []
    result = await call(runtime, spec(wordcount), "count", "the quick brown fox\njumps over\n", logs=logs)
    assert result == {"lines": 2, "words": 6, "bytes": 31}
    assert logs == ["counted 6 words"]
    assert await call(runtime, spec(wordcount), "upper", "héllo wasm") == "HéLLO WASM"


async def test_c_unknown_function_exits_non_zero(runtime: WasmRuntime, wordcount: Path) -> None:
    error = await expect_error(ErrorCode.FUNCTION_ERROR, call(runtime, spec(wordcount), "nope", "x"))
    assert error.details["exit_code"] == 2
    assert "unknown function 'nope'" in error.message


async def test_c_sees_a_directory_only_when_preopened(runtime: WasmRuntime, wordcount: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    error = await expect_error(ErrorCode.FUNCTION_ERROR, call(runtime, spec(wordcount), "save", "kept"))
    assert "cannot open /data/saved.txt" in error.details["stderr_tail"]
    writable = spec(wordcount, preopen_dir=str(shared), preopen_readonly=False)
    assert await call(runtime, writable, "save", "kept") == {"saved": 4}
    assert (shared / "saved.txt").read_text() == "kept"

"""The WASM runtime: both calling conventions, errors, limits, isolation, warm instances."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import wasmtime

from spear_actors import ErrorCode
from spear_actors.runtimes.base import Call
from spear_actors.runtimes.wasm import WasmRuntime

from .wasm_helpers import call, expect_error, wasm_spec

EXPORT: dict[str, Any] = {"abi": "export"}


def _drop(line: str) -> None:
    pass


@pytest.fixture
async def runtime(nursery: trio.Nursery, tmp_path: Path) -> WasmRuntime:
    runtime = WasmRuntime(tmp_path / "data")
    await nursery.start(runtime.run)
    return runtime


# -- exported functions, numeric params -------------------------------------


@pytest.mark.parametrize(
    ("function", "params", "expected"),
    [
        ("add", [2, 3], 5),
        ("add", [2**31 - 1, 1], -(2**31)),  # i32 wraps
        ("add64", [2**40, 2**40], 2**41),
        ("scale", [2, 1.5], 3.0),
        ("divmod", [7, 2], [3, 1]),  # two results come back as a list
        ("answer", None, 42),
        ("answer", [], 42),
    ],
)
async def test_export_numeric_params_map_to_the_export_types(
    runtime: WasmRuntime, function: str, params: Any, expected: Any
) -> None:
    assert await call(runtime, wasm_spec("add", **EXPORT), function, params) == expected


@pytest.mark.parametrize(
    ("function", "params", "fragment"),
    [
        ("add", [1], "takes 2 params (i32, i32), got 1"),
        ("add", 5, "takes 2 params"),
        ("add", [1.5, 2], "must be i32"),
        ("add", [2**32, 0], "does not fit i32"),
        ("scale", [True, 1.0], "must be f64"),
    ],
)
async def test_export_params_that_do_not_fit_are_invalid(
    runtime: WasmRuntime, function: str, params: Any, fragment: str
) -> None:
    error = await expect_error(ErrorCode.INVALID_ARGUMENT, call(runtime, wasm_spec("add", **EXPORT), function, params))
    assert fragment in error.message


async def test_unknown_export_is_not_found(runtime: WasmRuntime) -> None:
    error = await expect_error(ErrorCode.NOT_FOUND, call(runtime, wasm_spec("add", **EXPORT), "sub", [1, 2]))
    assert "'sub'" in error.message and "add" in error.message


async def test_trap_is_a_function_error_with_the_trap_message(runtime: WasmRuntime) -> None:
    error = await expect_error(ErrorCode.FUNCTION_ERROR, call(runtime, wasm_spec("add", **EXPORT), "divmod", [1, 0]))
    assert error.message == "wasm trap: integer divide by zero"
    assert error.details["trap_code"] == "INTEGER_DIVISION_BY_ZERO"


# -- exported functions, the memory ABI -------------------------------------


async def test_memory_abi_passes_strings_bytes_and_documents(runtime: WasmRuntime) -> None:
    raw = wasm_spec("bytes", abi="export", input_format="raw")
    assert await call(runtime, raw, "upper", "hello, wasm") == "HELLO, WASM"
    assert await call(runtime, wasm_spec("bytes", **EXPORT), "upper", {"name": "ada"}) == {"NAME": "ADA"}
    as_bytes = wasm_spec("bytes", abi="export", output_format="bytes")
    assert await call(runtime, as_bytes, "upper", b"\x00abc\xff") == b"\x00ABC\xff"
    # A list of numbers goes positionally unless the artifact asks for the memory ABI.
    forced = wasm_spec("bytes", abi="export", export_params="memory")
    assert await call(runtime, forced, "upper", [1, 2]) == [1, 2]


async def test_memory_abi_needs_alloc_and_the_right_signature(runtime: WasmRuntime) -> None:
    error = await expect_error(ErrorCode.INVALID_ARGUMENT, call(runtime, wasm_spec("add", **EXPORT), "add", "text"))
    assert "alloc" in error.message
    error = await expect_error(ErrorCode.INVALID_ARGUMENT, call(runtime, wasm_spec("bytes", **EXPORT), "live", "x"))
    assert "(ptr: i32, len: i32) -> i64" in error.message


# -- WASI commands ----------------------------------------------------------


async def test_wasi_params_arrive_on_stdin_and_stdout_is_the_result(runtime: WasmRuntime) -> None:
    document = {"text": "héllo", "n": [1, 2.5, None]}
    assert await call(runtime, wasm_spec("echo"), "run", document) == document
    assert await call(runtime, wasm_spec("echo", input_format="raw"), "run", "plain text") == "plain text"
    assert await call(runtime, wasm_spec("echo"), "run", None) is None  # no input, no output
    packed = wasm_spec("echo", input_format="msgpack", output_format="msgpack")
    assert await call(runtime, packed, "run", {"b": b"\x00\x01", "x": [1, 2]}) == {"b": b"\x00\x01", "x": [1, 2]}


@pytest.mark.parametrize(
    ("output_format", "expected"),
    [("auto", {"a": 1}), ("json", {"a": 1}), ("text", '{"a":1}'), ("bytes", b'{"a":1}')],
)
async def test_output_formats(runtime: WasmRuntime, output_format: str, expected: Any) -> None:
    assert await call(runtime, wasm_spec("echo", output_format=output_format), "run", {"a": 1}) == expected


async def test_strict_json_output_that_is_not_json_is_a_function_error(runtime: WasmRuntime) -> None:
    spec = wasm_spec("echo", input_format="raw", output_format="json")
    error = await expect_error(ErrorCode.FUNCTION_ERROR, call(runtime, spec, "run", "not json"))
    assert "not valid JSON" in error.message


async def test_function_name_is_argv1(runtime: WasmRuntime) -> None:
    assert await call(runtime, wasm_spec("argv"), "word_count") == "word_count"


async def test_environment_is_only_what_the_artifact_and_call_give(runtime: WasmRuntime) -> None:
    assert await call(runtime, wasm_spec("environ"), "run") is None  # nothing inherited from the node
    spec = wasm_spec("environ", env={"GREETING": "hi", "MODE": "artifact"})
    async with runtime.open_instance(spec) as instance:
        request = Call("e", "run", environment={"MODE": "call"})
        assert await instance.execute(request, None, _drop) == "GREETING=hi\nMODE=call\n"


async def test_stderr_lines_are_the_logs(runtime: WasmRuntime) -> None:
    logs: list[str] = []
    assert await call(runtime, wasm_spec("log"), "run", logs=logs) == {"ok": True}
    assert logs == ["line one", "line two", "no newline"]


async def test_non_zero_exit_is_a_function_error_with_code_and_stderr(runtime: WasmRuntime) -> None:
    logs: list[str] = []
    error = await expect_error(ErrorCode.FUNCTION_ERROR, call(runtime, wasm_spec("fail"), "run", logs=logs))
    assert error.message == "the module exited with code 3: error: nothing to do"
    assert error.details["exit_code"] == 3
    assert error.details["stderr_tail"] == "reading input\nerror: nothing to do\n"
    assert logs == ["reading input", "error: nothing to do"]


async def test_stream_mode_delivers_stdout_as_it_is_written(runtime: WasmRuntime) -> None:
    text = "".join(f"line {i:03d}\n" for i in range(30))  # 270 bytes: echo writes 64 at a time
    items: list[Any] = []

    async def sink(item: Any) -> None:
        items.append(item)
        await trio.sleep(0)

    assert await call(runtime, wasm_spec("echo", input_format="raw"), "run", text, sink=sink) is None
    assert len(items) == 5 and all(isinstance(item, str) for item in items)
    assert "".join(items) == text


async def test_stream_sink_failure_stops_the_module_and_is_the_error(runtime: WasmRuntime) -> None:
    from spear_actors import SpearError

    async def sink(item: Any) -> None:
        raise SpearError(ErrorCode.UNAVAILABLE, "client went away")

    error = await expect_error(
        ErrorCode.UNAVAILABLE, call(runtime, wasm_spec("echo", input_format="raw"), "run", "x" * 300, sink=sink)
    )
    assert error.message == "client went away"


async def test_output_limit(runtime: WasmRuntime) -> None:
    spec = wasm_spec("echo", input_format="raw", max_output_bytes=100)
    error = await expect_error(ErrorCode.RESOURCE_EXHAUSTED, call(runtime, spec, "run", "y" * 1000))
    assert "output" in error.message and error.details["limit"] == "output"


# -- limits -----------------------------------------------------------------


async def test_fuel_limit(runtime: WasmRuntime) -> None:
    spec = wasm_spec("burn", abi="export", fuel=10_000)
    assert await call(runtime, spec, "burn", [100]) == 4950
    error = await expect_error(ErrorCode.RESOURCE_EXHAUSTED, call(runtime, spec, "burn", [10**9]))
    assert "fuel" in error.message and error.details == {"limit": "fuel", "fuel": 10_000}


async def test_memory_limit(runtime: WasmRuntime) -> None:
    spec = wasm_spec("hog", abi="export", max_memory_bytes=4 * 1024 * 1024)
    error = await expect_error(ErrorCode.RESOURCE_EXHAUSTED, call(runtime, spec, "hog"))
    assert "memory limit reached" in error.message
    assert error.details["limit"] == "memory" and error.details["max_memory_bytes"] == 4 * 1024 * 1024


async def test_module_needing_more_memory_than_allowed_cannot_run(runtime: WasmRuntime) -> None:
    spec = wasm_spec(content=b'(module (memory 100) (func (export "f")))', abi="export", max_memory_bytes=1 << 20)
    error = await expect_error(ErrorCode.RESOURCE_EXHAUSTED, call(runtime, spec, "f"))
    assert "memory" in error.message


# -- isolation and warm instances -------------------------------------------


async def test_fresh_store_per_execution_leaks_no_state(runtime: WasmRuntime) -> None:
    async with runtime.open_instance(wasm_spec("counter", **EXPORT)) as instance:
        counts = [await instance.execute(Call(f"e{i}", "inc"), None, _drop) for i in range(3)]
        stored = await instance.execute(Call("e", "stored"), None, _drop)
    assert counts == [1, 1, 1] and stored == 0


async def test_warm_instance_keeps_state_and_resets_after_a_trap(runtime: WasmRuntime) -> None:
    async with runtime.open_instance(wasm_spec("counter", abi="export", warm=True)) as instance:

        async def run(function: str) -> Any:
            return await instance.execute(Call("e", function), None, _drop)

        assert [await run("inc") for _ in range(3)] == [1, 2, 3]
        assert await run("stored") == 3
        await expect_error(ErrorCode.FUNCTION_ERROR, run("boom"))
        assert await run("inc") == 1  # a new store, not a failed instance
        assert instance.describe()["warm_resets"] == 1
        with trio.move_on_after(0.05) as scope:
            await instance.wait_failed()
        assert scope.cancelled_caught


async def test_warm_memory_abi_gives_buffers_back(runtime: WasmRuntime) -> None:
    spec = wasm_spec("bytes", abi="export", input_format="raw", warm=True)
    async with runtime.open_instance(spec) as instance:
        for word in ("one", "two"):
            assert await instance.execute(Call("e", "upper", word), None, _drop) == word.upper()
        assert await instance.execute(Call("e", "live"), None, _drop) == 0


# -- artifacts and settings -------------------------------------------------


async def test_inline_wat_and_wasm_content(runtime: WasmRuntime) -> None:
    wat = b'(module (func (export "seven") (result i32) i32.const 7))'
    assert await call(runtime, wasm_spec(content=wat, **EXPORT), "seven") == 7
    assert await call(runtime, wasm_spec(content=bytes(wasmtime.wat2wasm(wat.decode())), **EXPORT), "seven") == 7


@pytest.mark.parametrize(
    ("spec_args", "fragment"),
    [
        ({"content": b"\x00asm\x01\x00\x00\x00garbage"}, "not a valid module"),
        ({"content": b'(module (func (export "f") i32.add))'}, "not a valid module"),
        ({"content": b"\xff\xfe"}, "neither WASM nor WAT"),
        ({"content": b'(module (import "env" "f" (func)) (func (export "_start")))'}, "imports"),
        ({"name": "add"}, "_start"),  # abi 'wasi' needs a WASI command
        ({"name": "add", "abi": "soap"}, "config.abi"),
        ({"name": "add", "abi": "export", "fuel": -1}, "config.fuel"),
        ({"name": "add", "abi": "export", "timeout_s": "soon"}, "config.timeout_s"),
        ({"name": "add", "abi": "export", "timeout_s": float("nan")}, "config.timeout_s"),
        ({"name": "add", "abi": "export", "timeout_s": float("inf")}, "config.timeout_s"),
        ({"name": "add", "abi": "export", "fuel": 2**64}, "config.fuel"),
        ({"name": "add", "abi": "export", "max_memory_bytes": 2**64}, "config.max_memory_bytes"),
        ({"name": "echo", "warm": True}, "config.warm"),
        ({"name": "echo", "preopen_dir": "/does/not/exist"}, "preopen_dir"),
    ],
)
async def test_unusable_artifacts_are_invalid(runtime: WasmRuntime, spec_args: dict[str, Any], fragment: str) -> None:
    name = spec_args.pop("name", None)
    content = spec_args.pop("content", None)
    error = await expect_error(
        ErrorCode.INVALID_ARGUMENT, call(runtime, wasm_spec(name, content=content, **spec_args), "f")
    )
    assert fragment in error.message


async def test_open_instance_needs_the_running_runtime(tmp_path: Path) -> None:
    runtime = WasmRuntime(None)
    await expect_error(ErrorCode.FAILED_PRECONDITION, call(runtime, wasm_spec("add", **EXPORT), "add", [1, 2]))


async def test_describe(runtime: WasmRuntime) -> None:
    spec = wasm_spec("add", **EXPORT)
    async with runtime.open_instance(spec) as instance:
        await instance.execute(Call("e", "add", [1, 2]), None, _drop)
        facts = instance.describe()
    assert facts["module_sha256"] == spec.artifact_digest
    assert facts["abi"] == "export" and facts["warm"] is False and facts["executions"] == 1


EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples" / "wasm"


@pytest.mark.parametrize(
    ("example", "config", "function", "params", "expected"),
    [
        ("greet", {"input_format": "raw"}, "greet", "Ada", "hello, Ada"),
        ("math", EXPORT, "add", [2, 3], 5),
        ("math", EXPORT, "hypot", [3, 4], 5.0),
        ("math", EXPORT, "fib", [50], 12586269025),
        ("reverse", {"abi": "export", "input_format": "raw"}, "reverse", "stressed", "desserts"),
    ],
)
async def test_examples(
    runtime: WasmRuntime, example: str, config: dict[str, Any], function: str, params: Any, expected: Any
) -> None:
    path = EXAMPLES / f"{example}.wat"
    spec = wasm_spec(content=path.read_bytes(), **config)
    assert await call(runtime, spec, function, params) == expected


async def test_counter_example_is_warm(runtime: WasmRuntime) -> None:
    spec = wasm_spec(content=(EXAMPLES / "counter.wat").read_bytes(), abi="export", warm=True)
    async with runtime.open_instance(spec) as instance:
        assert [await instance.execute(Call("e", "next"), None, _drop) for _ in range(3)] == [1, 2, 3]

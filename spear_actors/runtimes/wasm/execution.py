"""One execution on a worker thread: a store, an instance, the call, the error.

Everything here is synchronous and runs on a thread of the runtime's limiter;
:mod:`.instance` hands it over with ``trio.to_thread``. Failures leave as
:class:`SpearError`: DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED (fuel, memory,
output), FUNCTION_ERROR (trap, non-zero exit), NOT_FOUND (no such export),
INVALID_ARGUMENT (params that do not fit the export), CANCELLED.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Final

import wasmtime

from ...errors import ErrorCode, SpearError
from ..base import Call
from .cache import CompiledModule
from .capi import Interrupt, StoreHook, export, install_hook, set_stdin_bytes
from .codec import decode_output, encode_input
from .engine import EngineSetup
from .settings import WasmSettings
from .stdio import ExecutionIO, bind

__all__ = ["Job", "Sandbox"]

WASM_ERRORS: Final = (wasmtime.Trap, wasmtime.WasmtimeError)
"""What wasm code can raise: a trap, or an error (ExitTrap, a stopped execution, ...)."""
UNLIMITED_FUEL: Final = 2**64 - 1
_PAGE: Final = 65536
_U32: Final = 0xFFFF_FFFF
_U64: Final = 2**64 - 1
_INT_BITS: Final = {"i32": 32, "i64": 64}


@dataclasses.dataclass(slots=True)
class Sandbox:
    """A store holding one instance of the module."""

    store: wasmtime.Store
    hook: StoreHook
    instance: wasmtime.Instance
    names: frozenset[str]
    memory: wasmtime.Memory | None = None
    file_writer: wasmtime.Func | None = None
    """wasmtime's fd_write for files (only with a preopened directory)."""
    _exports: dict[str, Any] = dataclasses.field(default_factory=dict)

    def export(self, name: str) -> Any:
        """The instance's export *name*, or None (looked up once per store)."""
        if name not in self.names:
            return None
        item = self._exports.get(name)
        if item is None:
            item = self._exports[name] = export(self.store, self.instance, name)
        return item

    def func(self, name: str) -> wasmtime.Func | None:
        """The exported function *name*, or None."""
        item = self.export(name)
        return item if isinstance(item, wasmtime.Func) else None


@dataclasses.dataclass(slots=True)
class Job:
    """One call of one module. :meth:`run` runs on a worker thread.

    For a warm instance, ``sandbox`` is the kept store going in, and coming out
    the store to keep — None when it trapped, so the next call starts afresh."""

    setup: EngineSetup
    compiled: CompiledModule
    settings: WasmSettings
    call: Call
    io: ExecutionIO
    interrupt: Interrupt
    timeout: float
    argv0: str = "main"
    warm: bool = False
    sandbox: Sandbox | None = None

    def run(self) -> Any:
        """Execute the call; return its result or raise :class:`SpearError`."""
        bind(self.io)
        self.io.interrupt = self.interrupt
        try:
            if self.interrupt.check() is not None:
                raise self._stopped()
            if self.settings.abi == "wasi":
                return self._command()
            return self._export()
        finally:
            self.io.finish()
            bind(None)
            self.interrupt.finished = True

    def prepare(self) -> Sandbox:
        """Make the store of a warm instance (runs its ``_initialize``)."""
        bind(self.io)
        try:
            self.sandbox = self._enter(None)
            return self.sandbox
        except WASM_ERRORS as exc:
            raise self._failure(exc, None) from None
        finally:
            self.io.finish()
            bind(None)
            self.interrupt.finished = True

    # -- the two calling conventions ----------------------------------------

    def _command(self) -> Any:
        stdin = encode_input(self.call.params, self.settings.input_format)
        sandbox = None
        try:
            sandbox = self._enter(stdin)
            start = sandbox.func("_start")
            if start is None:
                raise SpearError(ErrorCode.INVALID_ARGUMENT, "abi 'wasi' needs a `_start` export")
            try:
                start(sandbox.store)
            except wasmtime.ExitTrap as exit_:
                if exit_.code != 0:
                    raise self._exited(exit_.code, sandbox) from None
        except WASM_ERRORS as exc:
            raise self._failure(exc, sandbox) from None
        if self.io.overflowed:
            raise self._too_much_output()
        if self.io.stream_error is not None:
            raise self._stopped()
        if self.call.stream:
            return None
        return decode_output(bytes(self.io.stdout), self.settings.output_format)

    def _export(self) -> Any:
        sandbox = None
        try:
            sandbox = self._enter(b"")
            name = self.call.function_name
            func = sandbox.func(name) if name in self.compiled.functions else None
            if func is None:
                raise SpearError(
                    ErrorCode.NOT_FOUND,
                    f"the module exports no function {name!r} (it has: {', '.join(sorted(self.compiled.functions))})",
                )
            params, results = self.compiled.functions[name]
            if self._uses_memory_abi():
                result = self._call_with_memory(sandbox, func, (params, results))
            else:
                result = func(sandbox.store, *_numeric_args(name, self.call.params, params))
        except WASM_ERRORS as exc:
            raise self._failure(exc, sandbox) from None
        except SpearError as exc:
            if exc.code is ErrorCode.FUNCTION_ERROR:
                self.sandbox = None  # the guest misbehaved: do not trust its state
            raise
        if self.io.stream_error is not None:
            raise self._stopped()
        return result

    def _uses_memory_abi(self) -> bool:
        if self.settings.export_params != "auto":
            return self.settings.export_params == "memory"
        params = self.call.params
        if isinstance(params, list):
            return not all(_is_number(value) for value in params)
        return not (params is None or _is_number(params))

    def _call_with_memory(self, sandbox: Sandbox, func: wasmtime.Func, signature: tuple[Any, Any]) -> Any:
        store, memory = sandbox.store, sandbox.memory
        alloc = sandbox.func("alloc")
        if memory is None or alloc is None:
            raise SpearError(
                ErrorCode.INVALID_ARGUMENT,
                "these params go through the memory ABI, which needs exports `memory` and `alloc(len) -> ptr`",
            )
        if signature != (("i32", "i32"), ("i64",)):
            raise SpearError(
                ErrorCode.INVALID_ARGUMENT,
                f"{self.call.function_name!r} must have type (ptr: i32, len: i32) -> i64 for the memory ABI",
            )
        data = encode_input(self.call.params, self.settings.input_format)
        pointer = alloc(store, len(data)) & _U32
        if pointer + len(data) > memory.data_len(store):
            raise SpearError(ErrorCode.FUNCTION_ERROR, "alloc returned a pointer outside linear memory")
        if data:
            memory.write(store, data, pointer)
        packed = func(store, pointer, len(data)) & _U64
        out_pointer, out_length = packed >> 32, packed & _U32
        if out_pointer + out_length > memory.data_len(store):
            raise SpearError(ErrorCode.FUNCTION_ERROR, "the result (ptr << 32 | len) lies outside linear memory")
        if out_length > self.settings.max_output_bytes:
            raise self._too_much_output()
        output = bytes(memory.read(store, out_pointer, out_pointer + out_length))
        dealloc = sandbox.func("dealloc")
        if self.warm and dealloc is not None:
            # A fresh store is dropped whole; a warm one must get its buffers back.
            dealloc(store, pointer, len(data))
            dealloc(store, out_pointer, out_length)
        return decode_output(output, self.settings.output_format)

    # -- stores ---------------------------------------------------------------

    def _enter(self, stdin: bytes | None) -> Sandbox:
        """The store for this call — the warm one, or a new one — armed with this
        call's fuel and interrupt."""
        sandbox = self.sandbox if self.warm else None
        if sandbox is None:
            sandbox = self._new_sandbox(stdin or b"")
            if self.warm:
                self.sandbox = sandbox
        else:
            self._arm(sandbox)
        self.io.memory = sandbox.memory
        self.io.file_fd_write = sandbox.file_writer
        return sandbox

    def _arm(self, sandbox: Sandbox) -> None:
        sandbox.hook.interrupt = self.interrupt
        sandbox.store.set_fuel(self.settings.fuel or UNLIMITED_FUEL)
        sandbox.store.set_epoch_deadline(1)

    def _new_sandbox(self, stdin: bytes) -> Sandbox:
        settings = self.settings
        store = wasmtime.Store(self.setup.engine)
        store.set_limits(memory_size=settings.max_memory_bytes)
        hook = install_hook(store)
        if self.compiled.imports_wasi:
            wasi = wasmtime.WasiConfig()
            wasi.argv = [self.argv0, self.call.function_name]
            env = {**settings.env, **self.call.environment}
            if env:
                wasi.env = list(env.items())
            if stdin:
                set_stdin_bytes(wasi, stdin)
            if settings.preopen_dir is not None:
                wasi.preopen_dir(settings.preopen_dir, settings.preopen_guest_path, not settings.preopen_readonly)
            store.set_wasi(wasi)
        hook.interrupt = self.interrupt
        store.set_fuel(settings.fuel or UNLIMITED_FUEL)
        sandbox = Sandbox(store, hook, self.compiled.pre.instantiate(store), self.compiled.exports)
        memory = sandbox.export("memory")
        sandbox.memory = memory if isinstance(memory, wasmtime.Memory) else None
        self.io.memory = sandbox.memory
        if settings.preopen_dir is not None and sandbox.memory is not None:
            sandbox.file_writer = self.io.file_fd_write = self.setup.file_fd_write(store, sandbox.memory)
        initialize = sandbox.func("_initialize")
        if settings.abi == "export" and initialize is not None:
            initialize(store)  # a WASI reactor's constructors, once per store
        return sandbox

    # -- errors ---------------------------------------------------------------

    def _stopped(self) -> SpearError:
        if self.interrupt.reason == "deadline":
            return SpearError(
                ErrorCode.DEADLINE_EXCEEDED,
                f"the execution exceeded its timeout of {self.timeout:g}s",
                {"timeout_s": self.timeout},
            )
        error = self.io.stream_error
        if isinstance(error, SpearError):
            return error
        if isinstance(error, Exception):
            return SpearError(ErrorCode.UNAVAILABLE, f"the stream's receiver failed: {error}")
        return SpearError(ErrorCode.CANCELLED, "the execution was cancelled")

    def _failure(self, exc: wasmtime.Trap | wasmtime.WasmtimeError, sandbox: Sandbox | None) -> SpearError:
        self.sandbox = None  # a trapped store may be half-way through anything
        if self.interrupt.reason is not None:
            return self._stopped()
        text = str(exc)
        if isinstance(exc, wasmtime.Trap) and exc.trap_code is wasmtime.TrapCode.OUT_OF_FUEL:
            return SpearError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"fuel exhausted: the execution used all {self.settings.fuel} units of its fuel",
                {"limit": "fuel", "fuel": self.settings.fuel},
            )
        if self._memory_full(sandbox) or (sandbox is None and "memory" in text and "limit" in text):
            return self._memory_error(text)
        details: dict[str, Any] = {"trap": text, "stderr_tail": self.io.stderr_tail}
        if isinstance(exc, wasmtime.Trap) and exc.trap_code is not None:
            details["trap_code"] = exc.trap_code.name
        cause = _cause(text)
        message = cause if cause.startswith("wasm trap") else f"wasm trap: {cause}"
        return SpearError(ErrorCode.FUNCTION_ERROR, message, details)

    def _exited(self, code: int, sandbox: Sandbox) -> SpearError:
        self.sandbox = None
        if self._memory_full(sandbox):
            return self._memory_error(f"exit code {code}")
        tail = self.io.stderr_tail
        last = tail.strip().splitlines()[-1] if tail.strip() else ""
        message = f"the module exited with code {code}" + (f": {last}" if last else "")
        return SpearError(ErrorCode.FUNCTION_ERROR, message, {"exit_code": code, "stderr_tail": tail})

    def _memory_full(self, sandbox: Sandbox | None) -> bool:
        # wasmtime answers a memory.grow past the store limit with -1, not a trap,
        # and leaves no trace of the refusal. A guest that fails with less than
        # max(one page, 1/16 of the limit) of headroom left is taken to have
        # failed for lack of memory (docs/wasm.md, "Limits").
        if sandbox is None or sandbox.memory is None:
            return False
        limit = self.settings.max_memory_bytes
        return sandbox.memory.data_len(sandbox.store) + max(_PAGE, limit // 16) > limit

    def _memory_error(self, cause: str) -> SpearError:
        limit = self.settings.max_memory_bytes
        return SpearError(
            ErrorCode.RESOURCE_EXHAUSTED,
            f"memory limit reached: linear memory may not grow past {limit} bytes ({_cause(cause)})",
            {"limit": "memory", "max_memory_bytes": limit, "stderr_tail": self.io.stderr_tail},
        )

    def _too_much_output(self) -> SpearError:
        limit = self.settings.max_output_bytes
        return SpearError(
            ErrorCode.RESOURCE_EXHAUSTED,
            f"output limit reached: the result may not exceed {limit} bytes",
            {"limit": "output", "max_output_bytes": limit},
        )


def _cause(text: str) -> str:
    """The innermost line of a wasmtime error ("wasm trap: ..." after its backtrace)."""
    lines = [line.strip() for line in text.split("Caused by:")[-1].splitlines() if line.strip()]
    return lines[-1].removeprefix("0: ").removeprefix("1: ") if lines else text.strip()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float)


def _numeric_args(name: str, params: Any, kinds: Sequence[str]) -> list[int | float]:
    """Positional params converted to the export's parameter types."""
    values = [] if params is None else list(params) if isinstance(params, list) else [params]
    if len(values) != len(kinds):
        raise SpearError(
            ErrorCode.INVALID_ARGUMENT,
            f"{name!r} takes {len(kinds)} params ({', '.join(kinds) or 'none'}), got {len(values)}",
        )
    converted: list[int | float] = []
    for index, (value, kind) in enumerate(zip(values, kinds, strict=True)):
        bits = _INT_BITS.get(kind)
        if bits is not None and isinstance(value, int):
            if not -(2 ** (bits - 1)) <= value < 2**bits:
                raise SpearError(ErrorCode.INVALID_ARGUMENT, f"param {index} ({value}) does not fit {kind}")
            converted.append(value - 2**bits if value >= 2 ** (bits - 1) else int(value))
        elif kind in ("f32", "f64") and isinstance(value, int | float) and not isinstance(value, bool):
            converted.append(float(value))
        else:
            raise SpearError(ErrorCode.INVALID_ARGUMENT, f"param {index} of {name!r} must be {kind}, got {value!r}")
    return converted

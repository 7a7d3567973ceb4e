"""Two wasmtime C-API calls the wasmtime package binds but does not wrap.

* ``wasmtime_store_epoch_deadline_callback``: a per-store hook run whenever the
  engine's epoch passes the store's deadline. Compiled code caches a store's
  deadline, so changing it from another thread does not stop a running loop;
  incrementing the engine's epoch does, but on its own it would hit every store
  of the engine. With the hook, each store is re-armed one tick at a time and
  decides for itself — against its own :class:`Interrupt` — whether to trap. A
  cancel then stops exactly one execution, at once, and a timeout is checked
  against the clock rather than against a count of ticks.
* ``wasi_config_set_stdin_bytes``: stdin from memory, so a WASI execution needs no
  temporary file.

Plus two shortcuts past the wrapper's per-call overhead, which is most of a small
execution's cost: a by-name export lookup (``wasmtime_instance_export_get``; the
wrapper's ``Instance.exports`` wraps every export of the instance each time), and
host functions on wasmtime's *unchecked* ABI (``wasmtime_linker_define_func_unchecked``:
raw i32 slots instead of the wrapper's Caller and Val objects, ~15 µs less per
guest write).

All go through ``wasmtime._ffi`` (the package's generated ctypes bindings), here
and nowhere else.
"""

from __future__ import annotations

import ctypes
import itertools
import time
from collections.abc import Callable
from typing import Any, Final, cast

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime._extern import wrap_extern

__all__ = [
    "Interrupt",
    "StoreHook",
    "as_caller",
    "define_i32_func",
    "export",
    "install_hook",
    "memory_span",
    "set_stdin_bytes",
]

for _name in (
    "wasmtime_store_epoch_deadline_callback",
    "wasi_config_set_stdin_bytes",
    "wasmtime_error_new",
    "wasmtime_instance_export_get",
    "wasmtime_linker_define_func_unchecked",
    "wasmtime_caller_context",
    "wasmtime_caller_export_get",
):
    if not hasattr(ffi, _name):  # pragma: no cover - depends on the installed wasmtime
        raise ImportError(f"the installed wasmtime package lacks {_name}; upgrade wasmtime")

_EXTERN_FUNC: Final = ffi.WASMTIME_EXTERN_FUNC.value
_EXTERN_MEMORY: Final = ffi.WASMTIME_EXTERN_MEMORY.value
_CONTINUE: Final = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE: keep running, new deadline = now + delta

_Callback = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.POINTER(ffi.wasmtime_context_t),
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(ffi.wasmtime_update_deadline_kind_t),
)
_Finalizer = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class Interrupt:
    """When one execution must stop: its deadline passed, or its caller cancelled.

    Written by the trio thread (:meth:`cancel`), read by the worker thread at each
    epoch tick; plain attribute stores are enough under the GIL.
    """

    __slots__ = ("cancelled", "deadline", "engine", "finished", "reason")

    def __init__(self, engine: wasmtime.Engine, deadline: float | None) -> None:
        self.engine = engine
        self.deadline = deadline
        """``time.monotonic()`` past which the execution traps; None = never."""
        self.cancelled = False
        self.reason: str | None = None
        """Why the execution was stopped ("deadline" or "cancelled"), once it was."""
        self.finished = False
        """Set by the worker thread when the execution has left wasm for good."""

    def cancel(self) -> None:
        """Stop the execution now: the next epoch check of its store traps.

        Incrementing the engine's epoch makes every running store check at once;
        the other stores' hooks just re-arm, so they lose nothing."""
        if not self.finished:
            self.cancelled = True
            self.engine.increment_epoch()

    def check(self) -> str | None:
        """The reason to trap now, or None to keep running."""
        if self.cancelled:
            self.reason = "cancelled"
        elif self.deadline is not None and time.monotonic() >= self.deadline:
            self.reason = "deadline"
        return self.reason


class StoreHook:
    """The per-store object the epoch callback consults; points at the current
    execution's :class:`Interrupt` (a warm store serves many executions)."""

    __slots__ = ("interrupt",)

    def __init__(self) -> None:
        self.interrupt: Interrupt | None = None


_hooks: dict[int, StoreHook] = {}
_keys = itertools.count(1)  # next() on a C iterator is atomic under the GIL


def _error(message: str) -> int:
    error = ffi.wasmtime_error_new(message.encode())
    address: int = ctypes.cast(error, ctypes.c_void_p).value or 0
    return address


def _on_epoch(_context: Any, data: int | None, delta: Any, kind: Any) -> int:
    # Runs on the worker thread inside wasm: it must never raise.
    try:
        hook = _hooks.get(data or 0)
        interrupt = hook.interrupt if hook is not None else None
        reason = interrupt.check() if interrupt is not None else None
        if reason is not None:
            return _error(f"spear: execution stopped ({reason})")
    except BaseException:  # pragma: no cover - defensive: keep running rather than crash
        pass
    delta[0] = 1
    kind[0] = _CONTINUE
    return 0


def _forget(data: int | None) -> None:
    _hooks.pop(data or 0, None)


# Kept at module level: the C side holds raw pointers to these trampolines.
_on_epoch_c = _Callback(_on_epoch)
_forget_c = _Finalizer(_forget)


def install_hook(store: wasmtime.Store) -> StoreHook:
    """Give *store* an epoch hook (forgotten again when the store is deleted)."""
    hook = StoreHook()
    key = next(_keys)
    _hooks[key] = hook
    ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), _on_epoch_c, key, _forget_c)
    store.set_epoch_deadline(1)
    return hook


def set_stdin_bytes(config: wasmtime.WasiConfig, data: bytes) -> None:
    """Make *data* the whole of the WASI program's stdin."""
    vec = ffi.wasm_byte_vec_t()
    buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
    ffi.wasm_byte_vec_new(ctypes.byref(vec), len(data), buffer)
    # The config takes ownership of the vector's copy of the bytes.
    ffi.wasi_config_set_stdin_bytes(config.ptr(), ctypes.byref(vec))


def export(store: wasmtime.Store, instance: wasmtime.Instance, name: str) -> Any:
    """The export *name* of *instance* (a Func, Memory, ...), or None."""
    item = ffi.wasmtime_extern_t()
    raw = name.encode()
    found = ffi.wasmtime_instance_export_get(
        store._context(), ctypes.byref(instance._instance), raw, len(raw), ctypes.byref(item)
    )
    if not found:
        return None
    # The common kinds directly: wrap_extern re-imports its classes on every call.
    kind = cast(int, item.kind)  # a plain int at run time, whatever the stubs say
    if kind == _EXTERN_FUNC:
        return wasmtime.Func._from_raw(item.of.func)
    if kind == _EXTERN_MEMORY:
        return wasmtime.Memory._from_raw(item.of.memory)
    return wrap_extern(item)


RawCaller = Any
"""The ``wasmtime_caller_t*`` of a host call on the unchecked ABI (valid during the call only)."""

_handlers: dict[int, tuple[Callable[..., int], int]] = {}


def _unchecked(env: int | None, caller: RawCaller, slots: Any, _slot_count: int) -> int:
    # Arguments come in as raw value slots and the (single i32) result goes back
    # in slot 0. The handler returns an errno; it must not raise, and this
    # wrapper makes sure nothing escapes into wasmtime.
    try:
        handler, arity = _handlers[env or 0]
        slots[0].i32 = handler(caller, *(slots[i].i32 for i in range(arity)))
    except BaseException:  # pragma: no cover - handlers catch their own errors
        slots[0].i32 = 29  # EIO
    return 0


_unchecked_c = ffi.wasmtime_func_unchecked_callback_t(_unchecked)
_forget_handler_c = _Finalizer(lambda env: _handlers.pop(env or 0, None))


def define_i32_func(linker: wasmtime.Linker, module: str, name: str, arity: int, handler: Callable[..., int]) -> None:
    """Define ``module.name: (i32, ... arity times) -> i32`` in *linker* as
    ``handler(caller, *args) -> int`` on the unchecked ABI (shadowing any earlier
    definition when the linker allows it)."""
    key = next(_keys)
    _handlers[key] = (handler, arity)
    i32 = wasmtime.ValType.i32()
    kind = wasmtime.FuncType([i32] * arity, [i32])
    raw_module, raw_name = module.encode(), name.encode()
    error = ffi.wasmtime_linker_define_func_unchecked(
        linker.ptr(),
        raw_module,
        len(raw_module),
        raw_name,
        len(raw_name),
        kind.ptr(),
        _unchecked_c,
        key,
        _forget_handler_c,
    )
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)


def memory_span(caller: RawCaller, memory: wasmtime.Memory | None) -> tuple[int, int]:
    """Address and size in bytes of *memory* — default: the caller's export
    ``memory`` — during a host call; (0, 0) when there is none."""
    if memory is None:
        item = ffi.wasmtime_extern_t()
        if not ffi.wasmtime_caller_export_get(caller, b"memory", 6, ctypes.byref(item)):
            return 0, 0
        found = wrap_extern(item)
        if not isinstance(found, wasmtime.Memory):
            return 0, 0
        memory = found
    context = ffi.wasmtime_caller_context(caller)
    handle = ctypes.byref(memory._memory)
    base = ctypes.cast(ffi.wasmtime_memory_data(context, handle), ctypes.c_void_p).value or 0
    return base, int(ffi.wasmtime_memory_data_size(context, handle))


def as_caller(caller: RawCaller) -> wasmtime.Caller:
    """A wrapper Caller for *caller*, to call wasm from a host call; the caller
    must invalidate it (``_invalidate``) before the host call returns."""
    return wasmtime.Caller(caller)

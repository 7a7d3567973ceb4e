"""The runtime's one wasmtime engine, its epoch ticker and its linkers."""

from __future__ import annotations

import importlib.metadata
import platform
import threading
from typing import Final

import wasmtime

from .capi import define_i32_func
from .stdio import fd_write

__all__ = ["TICK_SECONDS", "EngineSetup", "EpochTicker"]

TICK_SECONDS: Final = 0.01
"""How often the engine's epoch advances: the granularity of timeouts."""

_WASI: Final = "wasi_snapshot_preview1"

_FILE_WRITER: Final = """(module
  (import "guest" "memory" (memory 0))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (export "memory" (memory 0))
  (func (export "fd_write") (param i32 i32 i32 i32) (result i32)
    (call $fd_write (local.get 0) (local.get 1) (local.get 2) (local.get 3))))"""


def _wasmtime_version() -> str:
    try:
        return importlib.metadata.version("wasmtime")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - vendored wasmtime
        return "unknown"


class EngineSetup:
    """An engine with epoch interruption and fuel, plus the linkers every module
    of the runtime is instantiated with.

    ``cache_key`` names everything a serialized module depends on (wasmtime
    version, machine, engine settings): compiled code is only reused under it.
    """

    def __init__(self) -> None:
        config = wasmtime.Config()
        config.epoch_interruption = True
        config.consume_fuel = True
        config.cranelift_opt_level = "speed"
        self.engine = wasmtime.Engine(config)
        self.cache_key = (
            f"wasmtime={_wasmtime_version()};machine={platform.machine()};epoch_interruption=1;consume_fuel=1;opt=speed"
        )
        self.linker = wasmtime.Linker(self.engine)
        """WASI, with ``fd_write`` shadowed by the runtime's own (see stdio)."""
        self.linker.define_wasi()
        self.linker.allow_shadowing = True
        define_i32_func(self.linker, _WASI, "fd_write", 4, fd_write)
        self._native = wasmtime.Linker(self.engine)
        self._native.define_wasi()
        self._file_writer: wasmtime.Module | None = None  # compiled on first use
        self._file_writer_lock = threading.Lock()

    def file_fd_write(self, store: wasmtime.Store, memory: wasmtime.Memory) -> wasmtime.Func:
        """wasmtime's own ``fd_write`` for the instance whose memory is *memory* (files
        in a preopened directory).

        WASI reads the iovecs from the memory of the *calling instance*, so it cannot
        be called straight from the host's fd_write; it is called through a tiny
        module that imports the guest's memory and exports it again."""
        with self._file_writer_lock:
            if self._file_writer is None:
                self._file_writer = wasmtime.Module(self.engine, _FILE_WRITER)
        native = self._native.get(store, _WASI, "fd_write")
        writer = wasmtime.Instance(store, self._file_writer, [memory, native]).exports(store)["fd_write"]
        assert isinstance(writer, wasmtime.Func)
        return writer


class EpochTicker:
    """Advances one engine's epoch every :data:`TICK_SECONDS` on a thread of its own.

    A thread rather than a trio task: the ticks measure real time for code that
    runs in real time on worker threads, whatever clock the trio loop uses (a
    test's autojump clock would otherwise spin the ticker)."""

    def __init__(self, engine: wasmtime.Engine, interval: float = TICK_SECONDS) -> None:
        self._engine = engine
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._thread is not None

    def start(self) -> None:
        """Start ticking."""
        assert self._thread is None, "ticker already running"
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="wasm-epoch-ticker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop ticking; returns within one tick."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._engine.increment_epoch()

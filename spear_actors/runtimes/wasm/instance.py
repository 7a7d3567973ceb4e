"""A WASM instance: a compiled module plus settings, executed on worker threads.

By default every execution gets a fresh store (nothing leaks from one call to the
next) and executions of one instance run in parallel, bounded by the runtime's
limiter. A warm instance (``warm: true``) keeps one store and its state across
calls; its executions are serialized, and a store that trapped or was cancelled
mid-call is dropped and rebuilt on the next call instead of failing the instance.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from ...errors import ErrorCode, SpearError
from ...metrics.events import events
from ..base import Call, InstanceSpec, LogSink, RuntimeInstance, StreamSink
from .cache import CompiledModule
from .capi import Interrupt
from .execution import Job, Sandbox
from .settings import WasmSettings
from .stdio import ExecutionIO, LogForwarder

if TYPE_CHECKING:
    from .runtime import WasmRuntime

__all__ = ["WasmInstance"]

log = logging.getLogger(__name__)
_log = log  # execute()'s own `log` is the execution's log sink


class WasmInstance(RuntimeInstance):
    """One instance of a WASM task (made by :meth:`WasmRuntime.open_instance`)."""

    def __init__(
        self,
        runtime: WasmRuntime,
        spec: InstanceSpec,
        compiled: CompiledModule,
        settings: WasmSettings,
        share: trio.CapacityLimiter | None = None,
    ) -> None:
        self.instance_id = spec.instance_id
        self._share = share
        self._runtime = runtime
        self._spec = spec
        self._compiled = compiled
        self._settings = settings
        self._warm_lock = trio.Lock()
        self._sandbox: Sandbox | None = None
        self._executions = 0
        self._resets = 0

    async def execute(self, call: Call, sink: StreamSink | None, log: LogSink) -> Any:
        """Run *call* on a worker thread (see :class:`RuntimeInstance`)."""
        self._executions += 1
        timeout = self._settings.timeout_for(call.timeout, self._runtime.default_timeout_s)
        interrupt = Interrupt(self._runtime.engine, time.monotonic() + timeout)
        logs = LogForwarder(log)
        stream = call.stream and sink is not None
        job = Job(
            setup=self._runtime.setup,
            compiled=self._compiled,
            settings=self._settings,
            call=call,
            io=ExecutionIO(
                stdout="stream" if stream else "capture" if self._settings.abi == "wasi" else "log",
                max_output=self._settings.max_output_bytes,
                logs=logs,
                emit=_emitter(sink) if stream and sink else None,
                output_format=self._settings.output_format,
            ),
            interrupt=interrupt,
            timeout=timeout,
            argv0=self._spec.task_name or "main",
            warm=self._settings.warm,
        )
        try:
            if not self._settings.warm:
                return await self._runtime.run_job(job.run, interrupt, self._share)
            async with self._warm_lock:
                job.sandbox, self._sandbox = self._sandbox, None
                try:
                    return await self._runtime.run_job(job.run, interrupt, self._share)
                finally:
                    # An abandoned (cancelled) job may still hold its store: never reuse it.
                    self._sandbox = job.sandbox if interrupt.finished else None
                    self._resets += self._sandbox is None
        except SpearError as error:
            kind = trap_kind(error)
            if kind is not None:
                recorder = events()
                if recorder is not None:
                    recorder.wasm_trapped(kind)
                _log.debug(  # debug: a client can make modules trap at will
                    "%s: %s: %s",
                    self.instance_id,
                    call.execution_id,
                    error.message,
                    extra={"execution_id": call.execution_id, "instance_id": self.instance_id,
                           "task_id": self._spec.task_id, "code": error.code.name},
                )  # fmt: skip
            raise
        finally:
            logs.close()

    async def prepare(self) -> None:
        """Build the warm store now, so a module that cannot start fails the instance."""
        interrupt = Interrupt(self._runtime.engine, time.monotonic() + self._runtime.default_timeout_s)
        job = Job(
            setup=self._runtime.setup,
            compiled=self._compiled,
            settings=self._settings,
            call=Call(execution_id="", function_name="_initialize"),
            io=ExecutionIO(stdout="log", max_output=0, logs=LogForwarder(self._log_start)),
            interrupt=interrupt,
            timeout=self._runtime.default_timeout_s,
            argv0=self._spec.task_name or "main",
            warm=True,
        )
        try:
            self._sandbox = await self._runtime.run_job(job.prepare, interrupt, self._share)
        except SpearError as exc:
            raise SpearError(
                ErrorCode.INSTANCE_FAILED, f"the WASM instance could not start: {exc.message}", exc.details
            ) from None

    def _log_start(self, line: str) -> None:
        log.info("%s (start): %s", self.instance_id, line)

    async def wait_failed(self) -> SpearError:
        """Never returns: a WASM instance has no process that could die on its own
        (a warm store that traps is rebuilt, not reported)."""
        await trio.sleep_forever()

    def close(self) -> None:
        """Drop the warm store (the module stays cached in the runtime)."""
        self._sandbox = None

    def describe(self) -> dict[str, Any]:
        """Module digest and size, calling convention, warm or fresh, counters."""
        return {
            "runtime": "wasm",
            "module_sha256": self._compiled.digest,
            "module_bytes": self._compiled.size,
            "abi": self._settings.abi,
            "warm": self._settings.warm,
            "executions": self._executions,
            "warm_resets": self._resets,
        }


def _emitter(sink: StreamSink) -> Callable[[Any], None]:
    """Deliver one stream item from a worker thread, blocking it until the sink took it."""

    def emit(item: Any) -> None:
        trio.from_thread.run(sink, item)

    return emit


def trap_kind(error: SpearError) -> str | None:
    """The kind of WASM trap or limit that ended an execution with *error*, for the
    metrics: a wasmtime trap code (``unreachable``, ``memory_out_of_bounds``, ...),
    ``out_of_fuel``, ``memory_limit``, ``interrupt`` (its deadline), ``trap`` (no
    code); None for anything else (a module's own exit, a cancel)."""
    details = error.details
    if error.code is ErrorCode.RESOURCE_EXHAUSTED:
        limit = details.get("limit")
        return {"fuel": "out_of_fuel", "memory": "memory_limit"}.get(limit) if isinstance(limit, str) else None
    if error.code is ErrorCode.DEADLINE_EXCEEDED:
        return "interrupt"
    if error.code is ErrorCode.FUNCTION_ERROR and "trap" in details:
        code = details.get("trap_code")
        return str(code).lower() if code else "trap"
    return None

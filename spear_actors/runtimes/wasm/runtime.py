"""The WASM runtime: one engine, its epoch ticker, the module cache, the worker limiter."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TypeVar

import trio
import wasmtime

from ...errors import ErrorCode, SpearError
from ...metrics.events import events
from ..base import InstanceSpec, Runtime, RuntimeInstance
from .cache import CacheStats, ModuleCache
from .capi import Interrupt
from .engine import EngineSetup, EpochTicker
from .instance import WasmInstance
from .settings import WasmCeilings, WasmSettings

__all__ = ["WasmRuntime"]

_T = TypeVar("_T")


class WasmRuntime(Runtime):
    """Runs ``artifact_type: "wasm"`` tasks in process with wasmtime.

    *data_dir* holds the compiled-module cache (``<data_dir>/wasm-cache``; None =
    memory only). At most *max_workers* executions run at once, each on a worker
    thread, so the trio loop stays responsive while modules compute. An execution
    gets the shorter of its call's timeout and the artifact's ``timeout_s``, or
    *default_timeout_s* when neither is set. :meth:`run` must be running (the node
    runs it) before instances are opened: it owns the epoch ticker that enforces
    timeouts and cancellation.
    """

    kind = "wasm"

    def __init__(
        self,
        data_dir: Path | None,
        max_workers: int = 4,
        *,
        default_timeout_s: float = 60.0,
        ceilings: WasmCeilings | None = None,
    ) -> None:
        self.setup = EngineSetup()
        self.ceilings = ceilings or WasmCeilings()
        """The operator's limits; every instance's settings are lowered to them."""
        self._task_limiters: dict[str, tuple[trio.CapacityLimiter, int]] = {}
        self.cache = ModuleCache(self.setup, None if data_dir is None else Path(data_dir) / "wasm-cache")
        self.limiter = trio.CapacityLimiter(max_workers)
        """Worker threads in use (``borrowed_tokens``) out of ``max_workers``."""
        self.default_timeout_s = default_timeout_s
        self._ticker = EpochTicker(self.setup.engine)

    @property
    def engine(self) -> wasmtime.Engine:
        """The runtime's one engine (every module and store belongs to it)."""
        return self.setup.engine

    @property
    def stats(self) -> CacheStats:
        """What the module cache did (compiles, disk hits, recovered cache files)."""
        return self.cache.stats

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Tick the engine's epoch for as long as the node lives."""
        self._ticker.start()
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self._ticker.stop()

    def open_instance(self, spec: InstanceSpec) -> AbstractAsyncContextManager[RuntimeInstance]:
        """Compile (or fetch from the cache) the module of *spec*; see :class:`Runtime`."""
        return self._open(spec)

    @asynccontextmanager
    async def _open(self, spec: InstanceSpec) -> AsyncIterator[RuntimeInstance]:
        if not self._ticker.running:
            raise SpearError(ErrorCode.FAILED_PRECONDITION, "WasmRuntime.run() is not running")
        settings = WasmSettings.from_config(spec.config).under(self.ceilings)
        started = trio.current_time()
        recorder = events()
        if settings.preopen_dir is not None and not await trio.Path(settings.preopen_dir).is_dir():
            raise SpearError(ErrorCode.INVALID_ARGUMENT, f"preopen_dir {settings.preopen_dir!r} is not a directory")
        compiled = await self.cache.get(spec)
        if settings.abi == "wasi" and "_start" not in compiled.exports:
            raise SpearError(
                ErrorCode.INVALID_ARGUMENT,
                "abi 'wasi' needs a WASI command (a `_start` export); use abi 'export' to call exports",
            )
        share = self._task_share(spec.task_id)
        instance = WasmInstance(self, spec, compiled, settings, share)
        try:
            if settings.warm:
                try:
                    await instance.prepare()
                except SpearError:
                    if recorder is not None:
                        recorder.instance_failed("wasm", spec.task_id, "start_failed")
                    raise
            if recorder is not None:
                recorder.instance_started("wasm", spec.task_id, trio.current_time() - started)
            yield instance
        finally:
            instance.close()
            self._release_share(spec.task_id)

    def _task_share(self, task_id: str) -> trio.CapacityLimiter | None:
        # One limiter per task, shared by its instances, so that a task's spinning
        # modules cannot hold every worker thread (counted per open instance).
        if self.ceilings.task_workers is None:
            return None
        limiter, users = self._task_limiters.get(task_id, (None, 0))
        if limiter is None:
            limiter = trio.CapacityLimiter(self.ceilings.task_workers)
        self._task_limiters[task_id] = (limiter, users + 1)
        return limiter

    def _release_share(self, task_id: str) -> None:
        entry = self._task_limiters.get(task_id)
        if entry is None:
            return
        limiter, users = entry
        if users <= 1:
            del self._task_limiters[task_id]
        else:
            self._task_limiters[task_id] = (limiter, users - 1)

    async def run_job(
        self, job: Callable[[], _T], interrupt: Interrupt, share: trio.CapacityLimiter | None = None
    ) -> _T:
        """Run *job* on a worker thread; if the caller is cancelled, trip *interrupt*
        so the module stops at once instead of burning the abandoned thread. *share*
        is the task's own limiter, taken before a node-wide worker."""
        try:
            if share is None:
                return await trio.to_thread.run_sync(job, limiter=self.limiter, abandon_on_cancel=True)
            async with share:
                return await trio.to_thread.run_sync(job, limiter=self.limiter, abandon_on_cancel=True)
        except BaseException:
            interrupt.cancel()  # a no-op when the job already finished
            raise

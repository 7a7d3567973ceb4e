"""The WASM runtime (``artifact_type: "wasm"``) on wasmtime; docs/wasm.md is the guide.

Modules:
    runtime    WasmRuntime: the engine, the epoch ticker, the worker limiter
    instance   WasmInstance: fresh store per execution, or one warm store
    execution  what runs on a worker thread: store, instance, call, error mapping
    cache      compiled modules in memory and on disk
    engine     engine configuration, linkers, the epoch ticker thread
    stdio      the host's fd_write: stdout captured/streamed/logged, stderr to logs
    codec      params to bytes, bytes to results
    settings   the artifact's WASM settings (``artifact_spec.config``)
    capi       the two wasmtime C-API calls the wasmtime package does not wrap
"""

from .cache import CacheStats
from .runtime import WasmRuntime
from .settings import WasmSettings

__all__ = ["CacheStats", "WasmRuntime", "WasmSettings"]

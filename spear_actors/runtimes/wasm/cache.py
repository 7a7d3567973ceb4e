"""Compiled modules, kept in memory and on disk.

A module is compiled once per artifact content (sha256) and kept in memory (the
most recently used :data:`MAX_MODULES`). With a data dir, the compiled code is
also written to ``<data_dir>/wasm-cache/<key>.cwasm``, where the key hashes the
content digest together with the wasmtime version, machine and engine settings,
so a new runtime (a node restart) deserializes instead of compiling.

Deserializing trusts its input — wasmtime maps the bytes as executable code — so
each file carries a sha256 of its payload, checked before wasmtime sees it. A file
that fails the check, or that wasmtime rejects (another version or engine
config), is counted in :attr:`CacheStats.disk_errors`, recompiled and overwritten.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Final

import trio
import wasmtime

from ...errors import ErrorCode, SpearError
from ..base import InstanceSpec
from .engine import EngineSetup

__all__ = ["CacheStats", "CompiledModule", "ModuleCache"]

log = logging.getLogger(__name__)

MAX_MODULES: Final = 64
_MAGIC: Final = b"SPEARCW1"
_HEADER: Final = len(_MAGIC) + 32
_WASM_MAGIC: Final = b"\0asm"


@dataclasses.dataclass(slots=True)
class CacheStats:
    """What the module cache did since the runtime started."""

    compiled: int = 0
    """Modules compiled from .wasm / .wat bytes."""
    disk_hits: int = 0
    """Modules deserialized from the disk cache instead of compiled."""
    disk_errors: int = 0
    """Cache files found corrupt or incompatible (each was recompiled and rewritten)."""
    memory_hits: int = 0
    """Instances that found their module already in memory."""


@dataclasses.dataclass(frozen=True, slots=True)
class CompiledModule:
    """A module ready to instantiate, with what the runtime needs to know about it."""

    digest: str
    """sha256 hex of the artifact's bytes."""
    module: wasmtime.Module
    pre: wasmtime.InstancePre
    """The module pre-linked against the runtime's WASI linker."""
    exports: frozenset[str]
    functions: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]
    """Exported functions: name → (param types, result types), e.g. ("i32", "i32"), ("i64",)."""
    imports_wasi: bool
    size: int
    """Size of the artifact in bytes (.wasm or .wat)."""


class ModuleCache:
    """Compiles or loads each artifact's module once; shared by all instances of a runtime."""

    def __init__(self, setup: EngineSetup, cache_dir: Path | None, max_modules: int = MAX_MODULES) -> None:
        self._setup = setup
        self.cache_dir = cache_dir
        self._max = max_modules
        self._modules: collections.OrderedDict[str, CompiledModule] = collections.OrderedDict()
        self._locks: dict[str, trio.Lock] = {}
        self.stats = CacheStats()

    async def get(self, spec: InstanceSpec) -> CompiledModule:
        """The compiled module of *spec*'s artifact; INVALID_ARGUMENT if it is not one."""
        hint = spec.artifact_digest
        if hint and (cached := self._lookup(hint)) is not None:
            return cached
        source = await trio.to_thread.run_sync(_read_artifact, spec)
        digest = hashlib.sha256(source).hexdigest()
        async with self._locks.setdefault(digest, trio.Lock()):
            if (cached := self._lookup(digest)) is not None:
                return cached
            compiled, origin = await trio.to_thread.run_sync(self._load, digest, source)
        if origin == "disk":
            self.stats.disk_hits += 1
        else:
            self.stats.compiled += 1
            if origin == "recompiled":
                self.stats.disk_errors += 1
        self._remember(compiled, hint)
        return compiled

    def _lookup(self, digest: str) -> CompiledModule | None:
        compiled = self._modules.get(digest)
        if compiled is not None:
            self._modules.move_to_end(digest)
            self.stats.memory_hits += 1
        return compiled

    def _remember(self, compiled: CompiledModule, hint: str) -> None:
        for key in {compiled.digest, hint} - {""}:
            self._modules[key] = compiled
        while len(self._modules) > self._max:
            self._modules.popitem(last=False)

    def cache_path(self, digest: str) -> Path | None:
        """Where the compiled code of the artifact with sha256 *digest* is cached."""
        if self.cache_dir is None:
            return None
        key = hashlib.sha256(f"{digest}|{self._setup.cache_key}".encode()).hexdigest()
        return self.cache_dir / f"{key}.cwasm"

    def _load(self, digest: str, source: bytes) -> tuple[CompiledModule, str]:
        # Worker thread: disk cache, else compile (and write the cache).
        path = self.cache_path(digest)
        module, origin = None, "compiled"
        if path is not None and path.exists():
            module = self._read_cache(path)
            origin = "disk" if module is not None else "recompiled"
        if module is None:
            module = self._compile(source)
            if path is not None:
                self._write_cache(path, module)
        try:
            pre = self._setup.linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            raise SpearError(
                ErrorCode.INVALID_ARGUMENT, f"the module needs imports the WASM runtime lacks: {exc}"
            ) from None
        imports_wasi = any(item.module == "wasi_snapshot_preview1" for item in module.imports)
        exports = frozenset(item.name for item in module.exports)
        functions = {
            item.name: (tuple(str(t) for t in kind.params), tuple(str(t) for t in kind.results))
            for item in module.exports
            if isinstance(kind := item.type, wasmtime.FuncType)
        }
        return CompiledModule(digest, module, pre, exports, functions, imports_wasi, len(source)), origin

    def _compile(self, source: bytes) -> wasmtime.Module:
        try:
            if source.startswith(_WASM_MAGIC):
                return wasmtime.Module(self._setup.engine, source)
            return wasmtime.Module(self._setup.engine, source.decode())
        except UnicodeDecodeError:
            raise SpearError(ErrorCode.INVALID_ARGUMENT, "the artifact is neither WASM nor WAT text") from None
        except wasmtime.WasmtimeError as exc:
            raise SpearError(ErrorCode.INVALID_ARGUMENT, f"the artifact is not a valid module: {exc}") from None

    def _read_cache(self, path: Path) -> wasmtime.Module | None:
        try:
            blob = path.read_bytes()
            payload = blob[_HEADER:]
            if blob[: len(_MAGIC)] != _MAGIC or hashlib.sha256(payload).digest() != blob[len(_MAGIC) : _HEADER]:
                raise ValueError("checksum mismatch")
            return wasmtime.Module.deserialize(self._setup.engine, payload)
        except (OSError, ValueError, wasmtime.WasmtimeError) as exc:
            log.warning("wasm cache file %s unusable (%s); recompiling", path, exc)
            return None

    def _write_cache(self, path: Path, module: wasmtime.Module) -> None:
        payload = bytes(module.serialize())
        temp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temp.write_bytes(_MAGIC + hashlib.sha256(payload).digest() + payload)
            os.replace(temp, path)  # readers see the old file or the whole new one
        except OSError as exc:
            log.warning("cannot write wasm cache file %s: %s", path, exc)
            temp.unlink(missing_ok=True)


def _read_artifact(spec: InstanceSpec) -> bytes:
    """The module's bytes: inline content, a file, or the one module in a directory."""
    if spec.artifact.content is not None:
        return spec.artifact.content
    path = spec.artifact_path
    if path is None:
        raise SpearError(ErrorCode.INVALID_ARGUMENT, "a wasm artifact needs a location or inline content")
    if path.is_dir():
        path = _module_in(path, spec.config.get("module"))
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SpearError(ErrorCode.INVALID_ARGUMENT, f"cannot read wasm artifact {str(path)!r}: {exc}") from None


def _module_in(directory: Path, name: object) -> Path:
    if isinstance(name, str) and name:
        return directory / name
    found = sorted(p for p in directory.iterdir() if p.suffix in (".wasm", ".wat"))
    if len(found) != 1:
        raise SpearError(
            ErrorCode.INVALID_ARGUMENT,
            f"artifact directory {str(directory)!r} holds {len(found)} .wasm/.wat files; "
            "name one with artifact_spec.config.module",
        )
    return found[0]

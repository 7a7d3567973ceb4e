"""The WASM settings of one artifact, read from ``artifact_spec.config``.

Every key is optional; docs/wasm.md lists them. Keys this runtime does not know
are ignored (the same config map may carry settings for other layers), but a
known key with a wrong type or value is INVALID_ARGUMENT naming the key.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Final

from ...errors import ErrorCode, SpearError

__all__ = ["ABIS", "INPUT_FORMATS", "OUTPUT_FORMATS", "WasmCeilings", "WasmSettings"]

ABIS: Final = ("wasi", "export")
"""Calling conventions: a WASI command (stdin/stdout) or a direct call of an export."""
INPUT_FORMATS: Final = ("json", "msgpack", "raw")
"""How params become bytes (WASI stdin, or the memory ABI's input buffer)."""
OUTPUT_FORMATS: Final = ("auto", "json", "text", "bytes", "msgpack")
"""How output bytes become the result (WASI stdout, or the memory ABI's result buffer)."""
EXPORT_PARAMS: Final = ("auto", "numeric", "memory")
"""How an exported function receives params: positional numbers or the memory ABI."""

DEFAULT_MAX_MEMORY: Final = 256 * 1024 * 1024
DEFAULT_MAX_OUTPUT: Final = 16 * 1024 * 1024
_MAX_INT: Final = 2**63 - 1
"""Largest integer setting accepted (fuel is a u64 in wasmtime; memory sizes fit easily)."""
_MAX_TIMEOUT_S: Final = 86400.0 * 365


@dataclasses.dataclass(frozen=True, slots=True)
class WasmCeilings:
    """The operator's upper bounds (from the policy). Every task runs under them: an
    unset or larger artifact value becomes the ceiling."""

    max_memory_bytes: int = DEFAULT_MAX_MEMORY
    max_fuel: int | None = None
    """None: no fuel ceiling (time still bounds an execution)."""
    max_timeout_s: float | None = None
    """None: no ceiling beyond the call's own deadline."""
    max_output_bytes: int = DEFAULT_MAX_OUTPUT
    task_workers: int | None = None
    """Worker threads one task may hold at once (None: all of them)."""


def _invalid(key: str, message: str) -> SpearError:
    return SpearError(ErrorCode.INVALID_ARGUMENT, f"artifact_spec.config.{key} {message}")


def _choice(config: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = config.get(key, allowed[0])
    if value is None:
        return allowed[0]
    if not isinstance(value, str) or value.lower() not in allowed:
        raise _invalid(key, f"must be one of {', '.join(allowed)}, got {value!r}")
    return value.lower()


def _positive_int(config: Mapping[str, Any], key: str, default: int | None) -> int | None:
    value = config.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= _MAX_INT:
        raise _invalid(key, f"must be a positive integer up to 2**63-1, got {value!r}")
    return value


def _bool(config: Mapping[str, Any], key: str) -> bool:
    value = config.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _invalid(key, f"must be true or false, got {value!r}")
    return value


def _str_map(config: Mapping[str, Any], key: str) -> dict[str, str]:
    value = config.get(key) or {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _invalid(key, "must map strings to strings")
    return dict(value)


@dataclasses.dataclass(frozen=True, slots=True)
class WasmSettings:
    """How one WASM artifact is called and what it may use."""

    abi: str = "wasi"
    input_format: str = "json"
    output_format: str = "auto"
    export_params: str = "auto"
    fuel: int | None = None
    """Fuel per execution (roughly one unit per wasm instruction); None = unlimited."""
    max_memory_bytes: int = DEFAULT_MAX_MEMORY
    max_output_bytes: int = DEFAULT_MAX_OUTPUT
    timeout_s: float | None = None
    """The artifact's own cap on one execution; the call's timeout may only shorten it."""
    warm: bool = False
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    preopen_dir: str | None = None
    preopen_guest_path: str = "/data"
    preopen_readonly: bool = True

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> WasmSettings:
        """Read and check the WASM keys of *config*."""
        timeout = config.get("timeout_s")
        if timeout is not None and (
            not isinstance(timeout, int | float)
            or isinstance(timeout, bool)
            or not math.isfinite(timeout)
            or not 0 < timeout <= _MAX_TIMEOUT_S
        ):
            raise _invalid("timeout_s", f"must be a finite positive number of seconds (up to a year), got {timeout!r}")
        preopen = config.get("preopen_dir")
        if preopen is not None and (not isinstance(preopen, str) or not preopen):
            raise _invalid("preopen_dir", "must be a directory path")
        guest = config.get("preopen_guest_path", "/data")
        if not isinstance(guest, str) or not guest:
            raise _invalid("preopen_guest_path", "must be a non-empty path")
        readonly = config.get("preopen_readonly", True)
        if not isinstance(readonly, bool):
            raise _invalid("preopen_readonly", f"must be true or false, got {readonly!r}")
        settings = cls(
            abi=_choice(config, "abi", ABIS),
            input_format=_choice(config, "input_format", INPUT_FORMATS),
            output_format=_choice(config, "output_format", OUTPUT_FORMATS),
            export_params=_choice(config, "export_params", EXPORT_PARAMS),
            fuel=_positive_int(config, "fuel", None),
            max_memory_bytes=_positive_int(config, "max_memory_bytes", DEFAULT_MAX_MEMORY) or 0,
            max_output_bytes=_positive_int(config, "max_output_bytes", DEFAULT_MAX_OUTPUT) or 0,
            timeout_s=None if timeout is None else float(timeout),
            warm=_bool(config, "warm"),
            env=_str_map(config, "env"),
            preopen_dir=preopen,
            preopen_guest_path=guest,
            preopen_readonly=readonly,
        )
        if settings.warm and settings.abi == "wasi":
            # A WASI command's stdin is fixed when its store is made and `_start`
            # may run once per instance, so a command cannot stay warm.
            raise _invalid("warm", "needs abi 'export' (a WASI command runs once per store)")
        return settings

    def under(self, ceilings: WasmCeilings) -> WasmSettings:
        """These settings with every limit lowered to the operator's *ceilings*."""

        def lowest(value: float | None, ceiling: float | None) -> float | None:
            if ceiling is None:
                return value
            return ceiling if value is None else min(value, ceiling)

        fuel = lowest(self.fuel, ceilings.max_fuel)
        return dataclasses.replace(
            self,
            fuel=None if fuel is None else int(fuel),
            max_memory_bytes=min(self.max_memory_bytes, ceilings.max_memory_bytes),
            max_output_bytes=min(self.max_output_bytes, ceilings.max_output_bytes),
            timeout_s=lowest(self.timeout_s, ceilings.max_timeout_s),
        )

    def timeout_for(self, call_timeout: float | None, default: float) -> float:
        """Seconds one execution may run: the shorter of the call's and the artifact's."""
        limits = [t for t in (call_timeout, self.timeout_s) if t is not None and t > 0]
        return min(limits) if limits else default

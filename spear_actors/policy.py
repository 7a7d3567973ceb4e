"""The operator's policy: what clients may run on this node.

The operator (config file, command line, the program embedding a node) is trusted;
clients are not. :class:`OperatorPolicy` is the ``[policy]`` table of the config
file. :meth:`OperatorPolicy.admit` checks a client's ``artifact_spec`` when a task is
created and answers anything outside the policy with one ``PERMISSION_DENIED`` that
says which rule refused it, never whether a file exists. The runtimes and the
artifact store get their share of the policy as plain settings
(:meth:`~OperatorPolicy.sandbox`, :meth:`~OperatorPolicy.wasm_ceilings`,
:meth:`~OperatorPolicy.fetch_rules`). docs/security.md lists every setting.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import shlex
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from .artifacts.fetch import FetchRules
from .artifacts.location import SourceKind, parse_source
from .errors import ErrorCode, SpearError
from .model import ArtifactSpec
from .runtimes.external import SecretLimits
from .runtimes.sandbox import DEFAULT_AGENT_ENV, Sandbox, refused_env_name
from .runtimes.wasm.settings import WasmCeilings, WasmSettings

__all__ = ["OperatorPolicy", "listens_beyond_loopback", "path_allowed", "policy_refusal"]

_MiB: Final = 1024 * 1024
_GiB: Final = 1024 * _MiB
_SOURCES: Final = ("inline", "local", "http")
_RUNTIMES: Final = ("process", "wasm", "external")
_DEFAULT_RUNTIMES: Final = ("process", "wasm")
_LOOPBACK_NAMES: Final = ("localhost", "ip6-localhost")
_MAX_INT: Final = 2**63 - 1


def policy_refusal(reason: str, **details: object) -> SpearError:
    """The one error for anything outside the policy: PERMISSION_DENIED with *reason*."""
    return SpearError(ErrorCode.PERMISSION_DENIED, f"not allowed by the node's policy: {reason}", dict(details))


def listens_beyond_loopback(urls: list[str]) -> bool:
    """True if any of *urls* (gateway endpoints) accepts connections from other machines."""
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme.lower() == "unix":
            continue
        host = (parts.hostname or "").lower()
        if host in _LOOPBACK_NAMES:
            continue
        try:
            if ipaddress.ip_address(host).is_loopback:
                continue
        except ValueError:
            pass
        return True
    return False


def _under(path: str, roots: list[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def path_allowed(raw: str | Path, roots: list[Path]) -> bool:
    """Whether *raw* (relative to the node's working directory) lies under one of
    *roots*, both as written and after following symlinks. Never touches the file
    itself beyond reading links, so the answer says nothing about existence."""
    if not roots:
        return False
    lexical = os.path.normpath(os.path.join(os.getcwd(), os.fspath(raw)))
    real = os.path.realpath(lexical)
    plain = [os.path.normpath(os.path.abspath(root)) for root in roots]
    resolved = [os.path.realpath(root) for root in plain]
    return _under(lexical, plain) and _under(real, resolved)


# -- config parsing helpers -----------------------------------------------------------------


def _invalid(name: str, message: str) -> SpearError:
    return SpearError(ErrorCode.INVALID_ARGUMENT, f"config: policy.{name} {message}")


def _number(value: object, name: str, *, minimum: float, maximum: float, integer: bool) -> float:
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise _invalid(name, f"must be {'an integer' if integer else 'a number'}, got {value!r}")
    assert isinstance(value, int | float)
    number = value
    if not math.isfinite(number) or not minimum <= number <= maximum:
        raise _invalid(name, f"must be a finite number in [{minimum:g}, {maximum:g}], got {value!r}")
    return number


def _strings(value: object, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise _invalid(name, "must be a list of non-empty strings")
    return list(value)


@dataclasses.dataclass(slots=True)
class OperatorPolicy:
    """What clients may do on this node (the ``[policy]`` table). Every default is safe
    for a node on loopback; two adapt when it listens beyond loopback (see
    :meth:`resolved`)."""

    runtimes: list[str] = dataclasses.field(default_factory=lambda: list(_DEFAULT_RUNTIMES))
    """``artifact_type`` values clients may use (``external`` only when listed)."""
    sources: list[str] | None = None
    """Where client artifacts may come from: ``inline`` content, ``local`` paths (only
    under :attr:`artifact_roots`), ``http`` (and https) URLs. None: all three on a
    loopback node; ``inline`` and ``local`` when it listens beyond loopback (a URL is
    code from anywhere)."""
    artifact_roots: list[Path] | None = None
    """Directories client artifact paths (and ``working_directory``) must lie in.
    None: the node's working directory when it listens on loopback only (or not at
    all), no local paths when it listens beyond loopback."""
    client_commands: bool = False
    """Whether a client's ``config.command`` is accepted at all."""
    allowed_commands: list[str] = dataclasses.field(default_factory=list)
    """With :attr:`client_commands`, the programs (first word, exactly as written) a
    client's command may name."""
    fetch_timeout_s: float = 120.0
    """Total time for one artifact download, all retries included (also bounded by the
    deadline of the call creating the task)."""
    fetch_block_private: bool | None = None
    """Refuse downloads from loopback, link-local, private and other non-global
    addresses (checked on the address actually connected to, redirects included).
    None: on when the node listens beyond loopback."""
    fetch_allowed_hosts: list[str] = dataclasses.field(default_factory=list)
    """If not empty, the only hosts artifacts may be downloaded from (exact names,
    case-insensitive); listed hosts pass the private-address block."""
    wasm_max_memory_bytes: int = 256 * _MiB
    wasm_max_fuel: int = 10_000_000_000
    wasm_max_timeout_s: float = 300.0
    wasm_max_output_bytes: int = 16 * _MiB
    wasm_preopen_roots: list[Path] = dataclasses.field(default_factory=list)
    """Directories a client's ``preopen_dir`` must lie in (none: no preopens)."""
    wasm_preopen_writable: bool = False
    """Whether a client may set ``preopen_readonly: false``."""
    wasm_task_workers: int = 0
    """WASM worker threads one task may hold at once; 0: half of ``wasm_workers``
    (at least 1)."""
    agent_env: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_AGENT_ENV))
    """Variables of the node's environment passed to agent processes (plus the task's
    own ``config.env`` and the node's SERVICE_ADDR / SECRET / SPEAR_* variables)."""
    agent_max_address_space_bytes: int = 4 * _GiB
    agent_max_cpu_s: int = 3600
    agent_max_open_files: int = 1024
    agent_max_processes: int = 4096
    agent_user: str | None = None
    """Run agent processes as this user (the node must be root)."""
    agent_max_line_bytes: int = 64 * 1024
    """Longest line of agent stdout/stderr copied to the node log; the rest of the line
    is dropped and the line marked ``[truncated]``."""
    max_execution_log_bytes: int = 1 * _MiB
    """Log bytes kept per execution; later lines are dropped with one marker line."""
    agent_cgroup: Path | None = None
    """A cgroup v2 directory delegated to the node: each agent instance gets its own
    cgroup under it (memory, CPU, pids for the agent and all its descendants, and a
    kill that reaches all of them). None, or a directory that is not a writable
    cgroup v2: no cgroups (logged)."""
    agent_cgroup_memory_bytes: int = 0
    """memory.max per instance cgroup (0: none)."""
    agent_cgroup_cpus: float = 0.0
    """cpu.max per instance cgroup, in CPUs (0: none)."""
    agent_cgroup_pids: int = 0
    """pids.max per instance cgroup (0: none)."""
    external_secret_ttl_s: float = 600.0
    """How long an agent secret of an external task is good for, when the caller of
    ``issue_agent_secret`` does not say."""
    external_secret_max_ttl_s: float = 3600.0
    """The longest validity a caller may ask for."""
    external_max_secrets_per_task: int = 8
    """Agent secrets not yet used, plus agents waiting for an instance, per task."""

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: object, base: Path | None = None) -> OperatorPolicy:
        """Build from the ``[policy]`` table; paths are relative to *base* (the config
        file's directory). Every value is checked and named in the error."""
        if not isinstance(data, Mapping):
            raise SpearError(ErrorCode.INVALID_ARGUMENT, "config: policy must be a table")
        base = base or Path.cwd()
        policy = cls()
        known = {field.name for field in dataclasses.fields(cls)}
        for key, value in data.items():
            if key not in known:
                raise SpearError(ErrorCode.INVALID_ARGUMENT, f"config: unknown setting policy.{key}")
            setattr(policy, key, _parse_value(policy, key, value, base))
        policy.validate()
        return policy

    def validate(self) -> None:
        """Check every field (types, finite numbers, ranges); INVALID_ARGUMENT naming it."""
        for name in ("runtimes", "sources"):
            allowed = _RUNTIMES if name == "runtimes" else _SOURCES
            if getattr(self, name) is None and name == "sources":
                continue
            values = _strings(getattr(self, name), name)
            unknown = sorted(set(values) - set(allowed))
            if unknown:
                raise _invalid(name, f"has unknown values {unknown} (known: {', '.join(allowed)})")
        _strings(self.allowed_commands, "allowed_commands")
        _strings(self.fetch_allowed_hosts, "fetch_allowed_hosts")
        _strings(self.agent_env, "agent_env")
        for name in self.agent_env:
            if refused_env_name(name):
                raise _invalid("agent_env", f"may not pass {name!r} (a loader or node variable)")
        _number(self.fetch_timeout_s, "fetch_timeout_s", minimum=0.001, maximum=86400, integer=False)
        _number(self.wasm_max_timeout_s, "wasm_max_timeout_s", minimum=0.001, maximum=86400 * 7, integer=False)
        _number(self.wasm_max_memory_bytes, "wasm_max_memory_bytes", minimum=65536, maximum=2**48, integer=True)
        _number(self.wasm_max_fuel, "wasm_max_fuel", minimum=1, maximum=_MAX_INT, integer=True)
        _number(self.wasm_max_output_bytes, "wasm_max_output_bytes", minimum=1, maximum=2**40, integer=True)
        _number(self.wasm_task_workers, "wasm_task_workers", minimum=0, maximum=4096, integer=True)
        for name in ("agent_max_address_space_bytes", "agent_max_cpu_s", "agent_max_open_files", "agent_max_processes"):
            _number(getattr(self, name), name, minimum=0, maximum=_MAX_INT, integer=True)
        _number(self.agent_max_line_bytes, "agent_max_line_bytes", minimum=80, maximum=64 * _MiB, integer=True)
        _number(self.max_execution_log_bytes, "max_execution_log_bytes", minimum=0, maximum=2**40, integer=True)
        _number(self.agent_cgroup_memory_bytes, "agent_cgroup_memory_bytes", minimum=0, maximum=_MAX_INT, integer=True)
        _number(self.agent_cgroup_cpus, "agent_cgroup_cpus", minimum=0, maximum=4096, integer=False)
        _number(self.agent_cgroup_pids, "agent_cgroup_pids", minimum=0, maximum=2**31, integer=True)
        for name in ("external_secret_ttl_s", "external_secret_max_ttl_s"):
            _number(getattr(self, name), name, minimum=1, maximum=30 * 86400, integer=False)
        if self.external_secret_ttl_s > self.external_secret_max_ttl_s:
            raise _invalid("external_secret_ttl_s", "must not exceed external_secret_max_ttl_s")
        _number(
            self.external_max_secrets_per_task, "external_max_secrets_per_task", minimum=1, maximum=4096, integer=True
        )
        if self.agent_user is not None and (not isinstance(self.agent_user, str) or not self.agent_user):
            raise _invalid("agent_user", "must be a user name")
        for name in ("client_commands", "wasm_preopen_writable"):
            if not isinstance(getattr(self, name), bool):
                raise _invalid(name, "must be true or false")
        if self.fetch_block_private is not None and not isinstance(self.fetch_block_private, bool):
            raise _invalid("fetch_block_private", "must be true or false")

    def resolved(self, listen: list[str]) -> OperatorPolicy:
        """A copy with the exposure-dependent defaults decided for a node listening on
        *listen*: ``artifact_roots``, ``sources`` and ``fetch_block_private``."""
        exposed = listens_beyond_loopback(listen)
        roots = self.artifact_roots
        if roots is None:
            roots = [] if exposed else [Path.cwd()]
        block = exposed if self.fetch_block_private is None else self.fetch_block_private
        sources = self.sources
        if sources is None:
            sources = ["inline", "local"] if exposed else list(_SOURCES)
        return dataclasses.replace(
            self,
            artifact_roots=[Path(os.path.abspath(root)) for root in roots],
            fetch_block_private=block,
            sources=sources,
        )

    # -- what the parts of the node get ------------------------------------------------------
    def fetch_rules(self) -> FetchRules:
        """Download limits for the artifact store."""
        return FetchRules(
            total_timeout_s=self.fetch_timeout_s,
            block_private=bool(self.fetch_block_private),
            allowed_hosts=frozenset(host.lower() for host in self.fetch_allowed_hosts),
        )

    def sandbox(self) -> Sandbox:
        """How the process runtime confines agent processes."""
        return Sandbox(
            env_passthrough=tuple(self.agent_env),
            max_address_space_bytes=self.agent_max_address_space_bytes,
            max_cpu_s=self.agent_max_cpu_s,
            max_open_files=self.agent_max_open_files,
            max_processes=self.agent_max_processes,
            user=self.agent_user,
            max_line_bytes=self.agent_max_line_bytes,
            max_execution_log_bytes=self.max_execution_log_bytes,
            cgroup_parent=None if self.agent_cgroup is None else str(self.agent_cgroup),
            cgroup_memory_bytes=self.agent_cgroup_memory_bytes,
            cgroup_cpus=self.agent_cgroup_cpus,
            cgroup_pids=self.agent_cgroup_pids,
        )

    def secret_limits(self) -> SecretLimits:
        """The external runtime's bounds on agent secrets."""
        return SecretLimits(
            default_ttl_s=self.external_secret_ttl_s,
            max_ttl_s=self.external_secret_max_ttl_s,
            max_per_task=self.external_max_secrets_per_task,
        )

    def wasm_ceilings(self, workers: int) -> WasmCeilings:
        """The WASM runtime's ceilings, for a runtime with *workers* threads."""
        share = self.wasm_task_workers or max(1, workers // 2)
        return WasmCeilings(
            max_memory_bytes=self.wasm_max_memory_bytes,
            max_fuel=self.wasm_max_fuel,
            max_timeout_s=self.wasm_max_timeout_s,
            max_output_bytes=self.wasm_max_output_bytes,
            task_workers=min(share, workers),
        )

    # -- admission --------------------------------------------------------------------------
    def admit(self, spec: ArtifactSpec) -> None:
        """Check a client's *spec* before anything is fetched or read; PERMISSION_DENIED
        (naming the rule, never revealing a file) for anything outside the policy."""
        if spec.artifact_type not in self.runtimes:
            raise policy_refusal(f"artifact_type {spec.artifact_type!r} is not one of {sorted(self.runtimes)}")
        if spec.artifact_type == "external":
            return  # nothing is fetched, read or run here: the agent is started elsewhere
        source = parse_source(spec)
        kind = "http" if source.kind is SourceKind.HTTP else source.kind.value
        if kind not in (self.sources if self.sources is not None else _SOURCES):
            raise policy_refusal(f"{kind} artifacts are not allowed", location=source.shown)
        if source.kind is SourceKind.LOCAL:
            assert source.path is not None
            if not path_allowed(source.path, self.artifact_roots or []):
                raise policy_refusal(
                    f"artifact {source.shown} is not under an allowed artifact root", location=source.shown
                )
        elif source.kind is SourceKind.HTTP:
            host = (urllib.parse.urlsplit(source.location).hostname or "").lower()
            if self.fetch_allowed_hosts and host not in {h.lower() for h in self.fetch_allowed_hosts}:
                raise policy_refusal(f"artifact host {host!r} is not in fetch_allowed_hosts", location=source.shown)
        if spec.artifact_type == "process":
            self._admit_process(spec.config)
        elif spec.artifact_type == "wasm":
            self._admit_wasm(spec.config)

    def _admit_process(self, config: Mapping[str, Any]) -> None:
        command = config.get("command")
        if command is not None:
            if not self.client_commands:
                raise policy_refusal("a client may not choose config.command")
            try:
                words = shlex.split(command) if isinstance(command, str) else command  # as the runtime splits it
            except ValueError:
                words = None
            first = words[0] if isinstance(words, list) and words and isinstance(words[0], str) else None
            if first is None or first not in self.allowed_commands:
                raise policy_refusal(f"command {first!r} is not in allowed_commands")
        cwd = config.get("working_directory")
        if isinstance(cwd, str) and not path_allowed(cwd, self.artifact_roots or []):
            raise policy_refusal("config.working_directory is not under an allowed artifact root")
        env = config.get("env")
        if isinstance(env, Mapping):
            for name in env:
                if isinstance(name, str) and refused_env_name(name):
                    raise policy_refusal(f"config.env may not set {name!r}")

    def _admit_wasm(self, config: Mapping[str, Any]) -> None:
        settings = WasmSettings.from_config(config)  # INVALID_ARGUMENT for malformed values first
        limits = (
            ("max_memory_bytes", settings.max_memory_bytes, self.wasm_max_memory_bytes),
            ("fuel", settings.fuel, self.wasm_max_fuel),
            ("timeout_s", settings.timeout_s, self.wasm_max_timeout_s),
            ("max_output_bytes", settings.max_output_bytes, self.wasm_max_output_bytes),
        )
        for name, value, ceiling in limits:
            if value is not None and config.get(name) is not None and value > ceiling:
                raise policy_refusal(f"config.{name} {value!r} is above the node's ceiling {ceiling!r}")
        if settings.preopen_dir is not None:
            if not path_allowed(settings.preopen_dir, self.wasm_preopen_roots):
                raise policy_refusal("config.preopen_dir is not under an allowed preopen root")
            if not settings.preopen_readonly and not self.wasm_preopen_writable:
                raise policy_refusal("config.preopen_readonly false (a writable preopen) is not allowed")


def _parse_value(policy: OperatorPolicy, key: str, value: object, base: Path) -> object:
    if value is None and key in ("sources", "fetch_block_private", "agent_user", "agent_cgroup"):
        return None
    if key == "agent_cgroup":
        if not isinstance(value, str) or not value:
            raise _invalid(key, "must be a directory path")
        return Path(os.path.abspath(base / value))
    if key in ("artifact_roots", "wasm_preopen_roots"):
        if value is None and key == "artifact_roots":
            return None
        return [Path(os.path.abspath(base / item)) for item in _strings(value, key)]
    current = getattr(policy, key)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value

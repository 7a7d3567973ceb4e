"""Node configuration: embedded defaults, overridable from a TOML or JSON file.

Example (TOML)::

    listen = ["ws://127.0.0.1:7411"]
    data_dir = "./data"

    [defaults]
    max_instances = 4

    [tasks.hello]
    description = "example functions"
    artifact = { location = "examples/hello_agent.py" }
    policy = { min_instances = 1 }
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import ssl
import tempfile
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .cluster.config import ClusterConfig
from .errors import ErrorCode, SpearError
from .model import ArtifactSpec, InstancePolicy
from .policy import OperatorPolicy
from .protocol.transports import server_ssl_context

__all__ = ["DEFAULT_LISTEN", "NodeConfig", "TaskDeclaration", "TlsConfig"]

DEFAULT_LISTEN = "ws://127.0.0.1:7411"


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "spear_actors"


def _default_policy() -> InstancePolicy:
    return InstancePolicy(
        min_instances=0,
        max_instances=4,
        max_concurrency=1,
        idle_timeout_s=300.0,
        max_pending=1000,
        scheduling="least_loaded",
    )


@dataclasses.dataclass(slots=True)
class TaskDeclaration:
    """A task that exists from the node's start (declared in the config file)."""

    name: str
    artifact: ArtifactSpec
    description: str = ""
    policy: InstancePolicy = dataclasses.field(default_factory=InstancePolicy)


@dataclasses.dataclass(slots=True)
class TlsConfig:
    """The ``[tls]`` table: the certificate of the node's ``tls://`` and ``wss://``
    listeners (docs/security.md)."""

    cert: Path | None = None
    """PEM certificate chain (the server's certificate first)."""
    key: Path | None = None
    """PEM private key of the certificate."""

    @classmethod
    def from_dict(cls, value: object, base: Path) -> TlsConfig:
        """The ``[tls]`` table; relative paths are taken from *base*."""
        table = _mapping(value, "tls")
        unknown = set(table) - {"cert", "key"}
        if unknown:
            raise SpearError(ErrorCode.INVALID_ARGUMENT, f"config: tls: unknown keys {sorted(unknown)}")
        paths: dict[str, Path] = {}
        for key in ("cert", "key"):
            if key in table:
                if not isinstance(table[key], str):
                    raise SpearError(ErrorCode.INVALID_ARGUMENT, f"config: tls.{key} must be str")
                paths[key] = (base / table[key]).resolve()
        return cls(**paths)

    def server_context(self) -> ssl.SSLContext:
        """The listeners' TLS context; INVALID_ARGUMENT naming what is missing or
        unreadable."""
        if self.cert is None or self.key is None:
            raise SpearError(
                ErrorCode.INVALID_ARGUMENT,
                "tls:// and wss:// listeners need a certificate and key ([tls] cert and key, or --tls-cert/--tls-key)",
            )
        try:
            return server_ssl_context(str(self.cert), str(self.key))
        except (OSError, ssl.SSLError) as exc:
            raise SpearError(
                ErrorCode.INVALID_ARGUMENT, f"cannot load the TLS certificate {str(self.cert)!r} and key: {exc}"
            ) from None


@dataclasses.dataclass(slots=True)
class NodeConfig:
    """Everything a node needs; every field has a working default."""

    node_id: str = ""
    """The node's identity. Empty: the one kept in the store (``<data_dir>/state``),
    else a fresh ``node-<hex>`` (kept from then on with the SQLite store)."""
    listen: list[str] = dataclasses.field(default_factory=list)
    """Gateway endpoints for client services (ws://, wss://, tcp://, tls://, unix://;
    the TLS ones use ``tls``). Empty: none
    (an embedded node is used in-process); ``spear serve`` defaults to DEFAULT_LISTEN."""
    agent_listen: str | None = None
    """Where process agents dial back: unix:///path, tcp://host:port or ws://host:port.
    None: a unix socket in a fresh private temp directory."""
    agent_advertise: str | None = None
    """The SERVICE_ADDR handed to external agents (``issue_agent_secret``), when they
    must dial another address than the one bound (``ws://0.0.0.0:…``, a proxy, a
    Kubernetes service). None: the bound agent listener's address."""
    data_dir: Path = dataclasses.field(default_factory=_default_data_dir)
    token: str | None = None
    """If set, client hellos must carry it (UNAUTHENTICATED otherwise)."""
    insecure: bool = False
    """Allow listening beyond loopback without a token (refused otherwise)."""
    metrics_listen: str | None = None
    """Serve Prometheus metrics over HTTP here (``http://127.0.0.1:9464``); None: off."""
    max_auth_failures: int = 5
    """Failed authentications per peer address within ``auth_failure_window_s``; past
    them, that address's hellos are refused without being checked."""
    auth_failure_window_s: float = 60.0
    defaults: InstancePolicy = dataclasses.field(default_factory=_default_policy)
    default_timeout_ms: int = 30_000
    """Deadline of a call whose context.timeout_ms is 0."""
    start_timeout_s: float = 10.0
    """How long an instance may take to become READY."""
    stop_grace_s: float = 2.0
    """Between SIGTERM and SIGKILL when an agent process is stopped."""
    cancel_grace_s: float = 2.0
    """How long an agent has to confirm a cancel before its instance is killed and replaced."""
    max_execution_records: int = 10_000
    """Finished execution records kept in memory (oldest evicted first); with the
    SQLite store, older ones are still read from disk."""
    execution_record_ttl_s: float = 3600.0
    """Age after which a finished execution record is evicted (memory and disk)."""
    # -- the execution store (docs/execution-modes.md, "Durability") ----------------------
    store: str = "sqlite"
    """``sqlite``: records, idempotency keys, client-created tasks and the node id in
    ``<data_dir>/state/spear.sqlite3``; ``memory``: nothing outlives the process."""
    store_max_records: int = 12_000_000
    """Finished records kept on disk (SQLite store), oldest pruned first."""
    store_max_bytes: int = 4 * 1024**3
    """Bytes of finished records kept on disk (SQLite store): the disk bound."""
    store_synchronous: str = "NORMAL"
    """SQLite ``synchronous``: NORMAL survives a process crash; FULL also a power loss."""
    store_max_backlog: int = 50_000
    """Writes queued for the store's writer past which new calls are refused."""
    max_result_bytes: int = 1024**2
    """Largest result retained in a record; a larger one is kept as a size marker."""
    max_retained_result_bytes: int = 256 * 1024**2
    """Node-wide cap on result bytes held in memory by finished records."""
    max_log_bytes_per_record: int = 1024**2
    """Logs kept per record; the rest is replaced by a line saying how much was cut."""
    agent_heartbeat_interval_s: float = 1.0
    agent_heartbeat_timeout_s: float = 5.0
    client_heartbeat_interval_s: float = 5.0
    client_heartbeat_timeout_s: float = 20.0
    max_connections: int = 1024
    """Client connections served at once over all gateway listeners; one more is
    refused (RESOURCE_EXHAUSTED error frame, or HTTP 503 on websocket) before its hello."""
    max_connections_per_address: int = 256
    """Client connections served at once from one peer address (tcp and ws; unix
    sockets are exempt): one client cannot take every slot."""
    connection_fd_reserve: int = 256
    """Descriptors kept free of client connections (for agents, artifacts, the node):
    the gateway serves at most RLIMIT_NOFILE minus this many connections."""
    max_total_instances: int = 256
    """Node-wide cap on live instances, over all tasks."""
    max_running_executions: int = 100_000
    """Node-wide cap on unfinished (pending + running) executions: past it, calls are
    answered RESOURCE_EXHAUSTED at once."""
    start_backoff_s: float = 0.5
    """First back-off after an instance failed to start; doubles per failure."""
    start_backoff_max_s: float = 30.0
    """Longest back-off between start attempts of a crash-looping task."""
    shutdown_grace_s: float = 10.0
    """On SIGTERM, how long running calls may take to finish before the rest are
    answered UNAVAILABLE."""
    wasm_workers: int = 4
    """Worker threads running WASM executions (per node)."""
    tasks: list[TaskDeclaration] = dataclasses.field(default_factory=list)
    policy: OperatorPolicy = dataclasses.field(default_factory=OperatorPolicy)
    """What clients may run (the ``[policy]`` table; docs/security.md)."""
    cluster: ClusterConfig | None = None
    """The ``[cluster]`` table: join a cluster on etcd (docs/cluster.md); None: alone."""
    tls: TlsConfig = dataclasses.field(default_factory=TlsConfig)
    """Certificate and key of the ``tls://`` and ``wss://`` listeners (``[tls]``)."""

    def agent_endpoint(self) -> str:
        """The agent listener URL, choosing a private temp unix socket if unset."""
        if self.agent_listen is None:
            directory = tempfile.mkdtemp(prefix="spear-")
            self.agent_listen = f"unix://{directory}/agents.sock"
        return self.agent_listen

    @classmethod
    def from_file(cls, path: str | Path) -> NodeConfig:
        """Load a ``.toml`` or ``.json`` file; relative artifact locations and data_dir
        are taken relative to the file's directory."""
        path = Path(path)
        try:
            text = path.read_text()
            data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except (OSError, ValueError) as exc:
            raise SpearError(ErrorCode.INVALID_ARGUMENT, f"cannot read config {path}: {exc}") from None
        return cls.from_dict(data, base=path.parent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: Path | None = None) -> NodeConfig:
        """Build from a map (the parsed config file)."""
        base = base or Path.cwd()
        config = cls()
        known = {field.name for field in dataclasses.fields(cls)}
        for key, value in data.items():
            if key not in known:
                raise SpearError(ErrorCode.INVALID_ARGUMENT, f"config: unknown setting {key!r}")
            if key == "tasks":
                config.tasks = [_task(name, spec, base) for name, spec in _mapping(value, "tasks").items()]
            elif key == "cluster":
                config.cluster = None if value is None else ClusterConfig.from_mapping(_mapping(value, "cluster"))
            elif key == "policy":
                config.policy = OperatorPolicy.from_dict(value, base)
            elif key == "tls":
                config.tls = TlsConfig.from_dict(value, base)
            elif key == "defaults":
                config.defaults = InstancePolicy.from_dict(value, "defaults.").merged_over(config.defaults)
            elif key == "data_dir":
                config.data_dir = (base / str(value)).resolve()
            elif key == "listen":
                config.listen = [value] if isinstance(value, str) else list(value)
            elif key in ("token", "agent_listen", "agent_advertise", "metrics_listen"):
                if value is not None and not isinstance(value, str):
                    raise SpearError(ErrorCode.INVALID_ARGUMENT, f"config: {key} must be str")
                setattr(config, key, value)
            else:
                expected = type(getattr(config, key))
                if expected is float and isinstance(value, int):
                    value = float(value)
                if value is not None and getattr(config, key) is not None and not isinstance(value, expected):
                    raise SpearError(ErrorCode.INVALID_ARGUMENT, f"config: {key} must be {expected.__name__}")
                if isinstance(value, int | float) and not isinstance(value, bool):
                    _check_number(key, value)
                setattr(config, key, value)
        return config


def _check_number(key: str, value: float) -> None:
    # Durations, sizes and counts: finite, not negative, and a worker count of at least 1.
    low = 1 if key == "wasm_workers" else 0
    if not math.isfinite(value) or value < low or value > 2**53:
        raise SpearError(
            ErrorCode.INVALID_ARGUMENT, f"config: {key} must be a finite number in [{low}, 2**53], got {value!r}"
        )


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpearError(ErrorCode.INVALID_ARGUMENT, f"config: {where} must be a table")
    return value


def _task(name: str, value: object, base: Path) -> TaskDeclaration:
    table = _mapping(value, f"tasks.{name}")
    unknown = set(table) - {"artifact", "description", "policy"}
    if unknown:
        raise SpearError(ErrorCode.INVALID_ARGUMENT, f"config: tasks.{name}: unknown keys {sorted(unknown)}")
    artifact = ArtifactSpec.from_dict(table.get("artifact"), f"tasks.{name}.artifact.")
    if artifact.location and "://" not in artifact.location and not Path(artifact.location).is_absolute():
        artifact.location = str((base / artifact.location).resolve())
    return TaskDeclaration(
        name=name,
        artifact=artifact,
        description=str(table.get("description", "")),
        policy=InstancePolicy.from_dict(table.get("policy"), f"tasks.{name}.policy."),
    )

"""How a node reaches its cluster: the etcd endpoints and the registry's timings."""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Mapping
from typing import Any

from ..errors import ErrorCode, SpearError

__all__ = ["ClusterConfig"]


@dataclasses.dataclass(slots=True)
class ClusterConfig:
    """The ``[cluster]`` section of a node's config (operator input: trusted, but checked
    for mistakes by :meth:`validate`). A node without one runs alone."""

    endpoints: list[str]
    """etcd client URLs (``http://127.0.0.1:2379``); tried in order, failing over."""
    prefix: str = "/spear/"
    """Every key of this cluster lives under it; clusters sharing one etcd use distinct prefixes."""
    lease_ttl_s: int = 10
    """The node lease's TTL: a node silent this long is gone, with its task claims."""
    token: str | None = None
    """Shared secret nodes prove to each other (node-to-node calls; not sent to etcd)."""
    etcd_username: str | None = None
    etcd_password: str | None = None
    """etcd's own authentication, when the etcd cluster has it enabled."""
    etcd_ca_file: str | None = None
    """CA bundle that signed etcd's server certificate (``https://`` endpoints); None:
    the system's trust store."""
    etcd_cert_file: str | None = None
    etcd_key_file: str | None = None
    """Client certificate and key, when etcd requires them (``--client-cert-auth``)."""
    request_timeout_s: float = 2.0
    """Bound of every etcd call; no answer in time = etcd unavailable."""
    retry_interval_s: float = 1.0
    """Pause between attempts to reach etcd again after losing it."""
    load_publish_interval_s: float = 1.0
    """At most one write of the node's load per interval (0: at keepalive only)."""
    max_response_bytes: int = 4 * 1024 * 1024
    """Largest etcd answer read (a listing past it is RESOURCE_EXHAUSTED)."""

    @property
    def keepalive_interval_s(self) -> float:
        """How often the lease is renewed: three times per TTL, so one lost renewal is harmless."""
        return self.lease_ttl_s / 3

    def validate(self) -> None:
        """INVALID_ARGUMENT naming the first bad field."""

        def bad(message: str) -> SpearError:
            return SpearError(ErrorCode.INVALID_ARGUMENT, f"cluster config: {message}")

        if not self.endpoints:
            raise bad("endpoints: at least one etcd URL is needed")
        for endpoint in self.endpoints:
            if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
                raise bad(f"endpoints: {endpoint!r} is not an http(s):// URL")
        if not self.prefix.startswith("/") or not self.prefix.endswith("/") or len(self.prefix) > 256:
            raise bad(f"prefix must start and end with '/' (at most 256 characters): {self.prefix!r}")
        if not isinstance(self.lease_ttl_s, int) or not 2 <= self.lease_ttl_s <= 3600:
            raise bad(f"lease_ttl_s must be a whole number of seconds in 2..3600: {self.lease_ttl_s!r}")
        if not 0 < self.request_timeout_s <= 60:
            raise bad("request_timeout_s must be in (0, 60]")
        if not 0 < self.retry_interval_s <= 60:
            raise bad("retry_interval_s must be in (0, 60]")
        if self.load_publish_interval_s < 0:
            raise bad("load_publish_interval_s must be >= 0")
        if self.max_response_bytes < 64 * 1024:
            raise bad("max_response_bytes must be at least 64 KiB")
        if (self.etcd_username is None) != (self.etcd_password is None):
            raise bad("etcd_username and etcd_password go together")
        if (self.etcd_cert_file is None) != (self.etcd_key_file is None):
            raise bad("etcd_cert_file and etcd_key_file go together")

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS settings for ``https://`` endpoints (None: nothing configured, the
        defaults apply); INVALID_ARGUMENT if a file cannot be loaded."""
        if self.etcd_ca_file is None and self.etcd_cert_file is None:
            return None
        try:
            context = ssl.create_default_context(cafile=self.etcd_ca_file)
            if self.etcd_cert_file is not None:
                context.load_cert_chain(self.etcd_cert_file, self.etcd_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise SpearError(ErrorCode.INVALID_ARGUMENT, f"cluster config: cannot load TLS files: {exc}") from None
        return context

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> ClusterConfig:
        """Build from a config-file table; unknown keys are INVALID_ARGUMENT."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise SpearError(ErrorCode.INVALID_ARGUMENT, f"cluster config: unknown keys {unknown}")
        values = dict(raw)
        endpoints = values.get("endpoints")
        if isinstance(endpoints, str):
            values["endpoints"] = [endpoints]
        elif isinstance(endpoints, list | tuple):
            values["endpoints"] = list(endpoints)
        else:
            raise SpearError(ErrorCode.INVALID_ARGUMENT, "cluster config: endpoints must be a URL or a list of URLs")
        try:
            config = cls(**values)
        except TypeError as exc:
            raise SpearError(ErrorCode.INVALID_ARGUMENT, f"cluster config: {exc}") from None
        config.validate()
        return config

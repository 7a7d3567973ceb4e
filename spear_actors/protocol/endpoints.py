"""Endpoint URLs (``tcp://host:port``, ``tls://``, ``unix:///path``, ``ws://``, ``wss://``):
parsing, and the words for a failed connect.
"""

from __future__ import annotations

import dataclasses
import ssl
from urllib.parse import urlsplit

import trio

from ..errors import ErrorCode, SpearError

__all__ = ["Endpoint", "parse_endpoint"]


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """A parsed endpoint URL: ``scheme`` is tcp, tls, unix, ws or wss; ``path`` is for unix only."""

    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_endpoint(url: str) -> Endpoint:
    """Parse ``tcp://host:port``, ``tls://host:port``, ``ws://host:port[/path]``,
    ``wss://host:port[/path]`` or ``unix:///abs/path``.

    Raises :class:`SpearError` INVALID_ARGUMENT naming what is wrong.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "unix":
        path = (parts.netloc + parts.path) if parts.netloc else parts.path
        if not path:
            raise SpearError(ErrorCode.INVALID_ARGUMENT, f"unix endpoint {url!r} has no path")
        return Endpoint("unix", path=path)
    if scheme not in ("tcp", "tls", "ws", "wss"):
        raise SpearError(
            ErrorCode.INVALID_ARGUMENT,
            f"endpoint {url!r}: scheme must be ws, wss, tcp, tls or unix",
        )
    try:
        port = parts.port
    except ValueError:
        raise SpearError(ErrorCode.INVALID_ARGUMENT, f"endpoint {url!r} has an invalid port") from None
    if port is None or not parts.hostname:
        raise SpearError(ErrorCode.INVALID_ARGUMENT, f"endpoint {url!r} needs host:port")
    return Endpoint(scheme, host=parts.hostname, port=port)


def _reason(exc: BaseException) -> str:
    """*exc* in words; a failed TLS handshake names its cause (e.g. certificate
    verify failed), which trio keeps as the BrokenResourceError's cause."""
    cause = exc.__cause__
    if isinstance(exc, trio.BrokenResourceError) and isinstance(cause, ssl.SSLError):
        return f"TLS handshake failed: {getattr(cause, 'verify_message', None) or cause.reason or cause}"
    return str(exc) or repr(exc)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host

"""Downloading an artifact over HTTP(S) into a file, with retries and a size cap.

httpx runs on trio natively (it detects the running async library). One client per
download: downloads are rare (the cache absorbs repeats), and a short-lived client
leaves no pooled sockets behind for anybody to close.

Failure policy (every error names the location and the reason):

- 404 / 410 → NOT_FOUND, 401 / 403 → PERMISSION_DENIED, any other 4xx →
  INVALID_ARGUMENT, all at once without retrying: asking again will not help.
- 408, 429, 5xx, connection errors, timeouts and truncated bodies are transient:
  retried with exponential back-off (honouring ``Retry-After`` up to the back-off
  cap); when the retries run out → UNAVAILABLE with the last reason.
- TLS certificate failures are not transient → UNAVAILABLE at once.
- A body over the cap (by ``Content-Length`` or by counting) → RESOURCE_EXHAUSTED.
- The whole download (every attempt and back-off) has a total deadline
  (:attr:`FetchRules.total_timeout_s`, and the deadline of the call that creates the
  task): past it → DEADLINE_EXCEEDED.
- With :attr:`FetchRules.block_private`, a host that resolves to a loopback,
  link-local, private or otherwise non-global address is PERMISSION_DENIED before
  any connection is made; the check is on the address actually connected to, for
  every redirect too. Hosts in :attr:`FetchRules.allowed_hosts` pass it.

Neither the environment's proxies nor ``.netrc`` are used (a client must not make
the node send its credentials to a host of the client's choosing), and the URLs
httpx and httpcore write to their loggers are redacted (:func:`redact_urls`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import logging
import math
import random
import socket
import ssl
from collections.abc import Iterable
from pathlib import Path

import httpcore
import httpx
import trio

from ..errors import ErrorCode, SpearError
from .location import invalid, redact_urls

__all__ = ["FetchRules", "RetryPolicy", "download", "public_address"]

log = logging.getLogger(__name__)


class _RedactURLs(logging.Filter):
    """Rewrites a record's message with every URL redacted (credentials, query values)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler to report
            return True
        redacted = redact_urls(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


# Filters act on records logged to the logger they are attached to (not on records
# propagating from children), so every logger these libraries write to gets one.
_REDACTOR = _RedactURLs()
for _name in ("httpx", "httpcore", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy"):
    logging.getLogger(_name).addFilter(_REDACTOR)


@dataclasses.dataclass(frozen=True, slots=True)
class FetchRules:
    """The operator's limits on artifact downloads (from the policy)."""

    total_timeout_s: float = 120.0
    """Seconds for a whole download, retries and back-offs included."""
    block_private: bool = False
    """Refuse hosts resolving to non-global addresses (see :func:`public_address`)."""
    allowed_hosts: frozenset[str] = frozenset()
    """If not empty, the only hosts downloads may go to (lower-case); they pass the
    private-address block."""


def public_address(address: str) -> bool:
    """Whether *address* (an IP literal) is a global unicast address: not loopback,
    link-local, private, shared (CGNAT), multicast, reserved or unspecified."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            ip = mapped
    return ip.is_global and not ip.is_multicast


class _Refused(Exception):
    """The policy refuses the host (raised inside httpcore, unwrapped by :func:`download`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's trio backend, connecting only to addresses the rules allow.

    The name is resolved here and the connection made to the checked address, so a
    DNS answer cannot change between the check and the connect.
    """

    def __init__(self, rules: FetchRules) -> None:
        self.rules = rules
        self.inner = httpcore.TrioBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        name = host.lower().strip("[]")
        listed = name in self.rules.allowed_hosts
        if self.rules.allowed_hosts and not listed:
            raise _Refused(f"host {name!r} is not in fetch_allowed_hosts")
        if not self.rules.block_private or listed:
            return await self.inner.connect_tcp(host, port, timeout, local_address, socket_options)
        with trio.fail_after(timeout if timeout is not None else math.inf):
            try:
                infos = await trio.socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise httpcore.ConnectError(str(exc)) from exc
        addresses = [str(info[4][0]) for info in infos]
        allowed = [address for address in addresses if public_address(address)]
        if not allowed:
            raise _Refused(f"host {name!r} resolves to a non-public address")
        return await self.inner.connect_tcp(allowed[0], port, timeout, local_address, socket_options)

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def _transport(rules: FetchRules, ssl_context: ssl.SSLContext) -> httpx.AsyncHTTPTransport:
    transport = httpx.AsyncHTTPTransport(verify=ssl_context, trust_env=False)
    # httpx has no public knob for httpcore's network backend; its transport is a thin
    # wrapper over this pool, built the same way apart from the backend.
    transport._pool = httpcore.AsyncConnectionPool(ssl_context=ssl_context, network_backend=_GuardedBackend(rules))
    return transport


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How transient download failures are retried."""

    retries: int = 4
    """Retries after the first attempt (so at most ``retries + 1`` requests)."""
    backoff_base: float = 0.5
    """Seconds before the first retry; doubled for each further one."""
    backoff_max: float = 8.0
    """Upper bound of one back-off (also caps a server's ``Retry-After``)."""

    def delay(self, retry: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number *retry* (1-based).

        A little jitter (±20 %) keeps many nodes that failed together from
        retrying in lock-step against the same server.
        """
        backoff = min(self.backoff_max, self.backoff_base * 2.0 ** (retry - 1))
        if retry_after is not None:
            backoff = max(backoff, min(retry_after, self.backoff_max))
        return backoff * random.uniform(0.8, 1.2)  # jitter, not cryptography


class _Transient(Exception):
    """A failure worth another attempt."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def _retry_after(response: httpx.Response) -> float | None:
    # Only the delta-seconds form; an HTTP date is rare for artifact servers.
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _status_failure(shown: str, response: httpx.Response) -> SpearError | _Transient:
    status = response.status_code
    reason = f"HTTP {status} {response.reason_phrase}".rstrip()
    if status in (408, 429) or status >= 500:
        return _Transient(reason, _retry_after(response))
    details = {"location": shown, "http_status": status}
    if status in (404, 410):
        return SpearError(ErrorCode.NOT_FOUND, f"artifact {shown}: {reason}", details)
    if status in (401, 403):
        return SpearError(ErrorCode.PERMISSION_DENIED, f"artifact {shown}: {reason}", details)
    return invalid(shown, reason, http_status=status)


def _too_big(shown: str, limit: int) -> SpearError:
    return SpearError(
        ErrorCode.RESOURCE_EXHAUSTED,
        f"artifact {shown}: download exceeds the limit of {limit} bytes",
        {"location": shown, "limit": limit},
    )


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    # httpx wraps httpcore's error, which wraps trio's, which wraps the ssl one.
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _describe(exc: BaseException) -> str:
    text = redact_urls(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _attempt(client: httpx.AsyncClient, url: str, shown: str, dest: Path, max_bytes: int) -> tuple[str, int]:
    # identity encoding + raw bytes: the checksum is over the file as published,
    # and a server that gzips on the fly (or mislabels a .tar.gz) cannot change it;
    # counting raw bytes also keeps a compression bomb from passing the size cap.
    async with client.stream("GET", url, headers={"accept-encoding": "identity"}) as response:
        if not 200 <= response.status_code < 300:
            raise _status_failure(shown, response)
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise _too_big(shown, max_bytes)
        digest = hashlib.sha256()
        size = 0
        failure: Exception | None = None
        async with await trio.open_file(dest, "wb") as out:
            # httpx's body iterator is a chain of async generators. Leaving the loop
            # while they are suspended (an exception or a cancellation in the loop
            # body) abandons them half-way, which trio reports as a ResourceWarning.
            # So the body never raises and never takes a cancellation: its one await
            # is shielded, a failure is parked and the loop stopped by cancelling
            # `stop`, which lands inside the generators' own network read and
            # unwinds them properly. An outside cancellation lands there too.
            with trio.CancelScope() as stop:
                async for chunk in response.aiter_raw():
                    if failure is not None:
                        continue
                    try:
                        size += len(chunk)
                        if size > max_bytes:
                            raise _too_big(shown, max_bytes)
                        digest.update(chunk)
                        with trio.CancelScope(shield=True):
                            await out.write(chunk)
                    except Exception as exc:
                        failure = exc
                        stop.cancel()
        if failure is not None:
            raise failure
    return digest.hexdigest(), size


async def _attempt_mapped(
    client: httpx.AsyncClient, url: str, shown: str, dest: Path, max_bytes: int
) -> tuple[str, int]:
    # Sort httpx's exceptions into "try again" and "give up now".
    try:
        return await _attempt(client, url, shown, dest, max_bytes)
    except (httpx.UnsupportedProtocol, httpx.TooManyRedirects, httpx.InvalidURL) as exc:
        raise invalid(shown, _describe(exc)) from exc
    except httpx.ConnectError as exc:
        if _caused_by(exc, ssl.SSLCertVerificationError):
            raise SpearError(
                ErrorCode.UNAVAILABLE, f"artifact {shown}: TLS verification failed: {exc}", {"location": shown}
            ) from exc
        raise _Transient(_describe(exc)) from exc
    except httpx.TransportError as exc:  # timeouts, resets, truncated bodies
        raise _Transient(_describe(exc)) from exc


async def download(
    url: str,
    shown: str,
    dest: Path,
    *,
    max_bytes: int,
    timeout: float,
    retry: RetryPolicy,
    ssl_context: ssl.SSLContext,
    rules: FetchRules | None = None,
    deadline: float = math.inf,
) -> tuple[str, int]:
    """GET *url* into *dest* (overwritten per attempt); return (sha256 hex, size).

    *shown* is the redacted location used in messages; *timeout* bounds each
    connect / read / write, *rules* the whole download (which also ends at the trio
    time *deadline*). Raises SpearError as described in the module docstring.
    """
    rules = rules or FetchRules()
    total = rules.total_timeout_s
    with trio.move_on_at(min(deadline, trio.current_time() + total)) as scope:
        try:
            return await _download(url, shown, dest, max_bytes, timeout, retry, ssl_context, rules)
        except _Refused as exc:
            raise SpearError(
                ErrorCode.PERMISSION_DENIED,
                f"artifact {shown}: not allowed by the node's policy: {exc.reason}",
                {"location": shown},
            ) from None
    assert scope.cancelled_caught
    raise SpearError(
        ErrorCode.DEADLINE_EXCEEDED,
        f"artifact {shown}: download did not finish in time (fetch_timeout_s {total:g}, or the call's deadline)",
        {"location": shown, "fetch_timeout_s": total},
    )


async def _download(
    url: str,
    shown: str,
    dest: Path,
    max_bytes: int,
    timeout: float,
    retry: RetryPolicy,
    ssl_context: ssl.SSLContext,
    rules: FetchRules,
) -> tuple[str, int]:
    transport = _transport(rules, ssl_context)
    async with httpx.AsyncClient(
        timeout=timeout, follow_redirects=True, transport=transport, trust_env=False
    ) as client:
        failures = 0
        while True:
            try:
                return await _attempt_mapped(client, url, shown, dest, max_bytes)
            except _Transient as exc:
                failures += 1
                if failures > retry.retries:
                    raise SpearError(
                        ErrorCode.UNAVAILABLE,
                        f"artifact {shown}: {exc.reason} (gave up after {failures} attempts)",
                        {"location": shown, "attempts": failures, "reason": exc.reason},
                    ) from exc
                delay = retry.delay(failures, exc.retry_after)
                log.warning("artifact %r: %s; retry %d in %.2fs", shown, exc.reason, failures, delay)
                await trio.sleep(delay)

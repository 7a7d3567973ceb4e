"""An etcd v3 client for trio over etcd's JSON gateway (``POST /v3/...``) with httpx.

Only what the cluster registry needs: put / range / delete / txn, lease grant /
keepalive / revoke / time-to-live, and a watch stream. Every call is bounded in time
(``timeout_s``, raised as ``UNAVAILABLE``) and every answer in bytes
(``max_response_bytes``, ``RESOURCE_EXHAUSTED``); etcd's gRPC status codes become
:class:`~spear_actors.errors.SpearError` codes (see ``_GRPC_TO_SPEAR``).

Endpoints are tried in order; a connection that cannot be made moves to the next one
(a request that reached a server is never re-sent, so a transaction runs at most once).
The gateway's path prefix is found on first use: etcd 3.4+ serves ``/v3``, 3.3 only
``/v3beta``, 3.2 ``/v3alpha``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import trio

from ..errors import ErrorCode, SpearError
from .etcd_types import (
    Compare,
    DeleteResult,
    Key,
    KeyValue,
    Lease,
    Op,
    PutResult,
    RangeResult,
    TxnResult,
    WatchResponse,
    parse_int,
    range_body,
    to_bytes,
)

__all__ = [
    "API_PREFIXES",
    "Compare",
    "DeleteResult",
    "EtcdClient",
    "KeyValue",
    "Lease",
    "Op",
    "PutResult",
    "RangeResult",
    "TxnResult",
    "WatchResponse",
    "WatchStream",
]

API_PREFIXES = ("/v3", "/v3beta", "/v3alpha")
"""Gateway path prefixes, newest first; the first one the server answers is kept."""

# gRPC status code (as the gateway reports it in "code") -> our code.
_GRPC_TO_SPEAR: dict[int, ErrorCode] = {
    1: ErrorCode.CANCELLED,
    2: ErrorCode.INTERNAL,  # UNKNOWN
    3: ErrorCode.INVALID_ARGUMENT,
    4: ErrorCode.DEADLINE_EXCEEDED,
    5: ErrorCode.NOT_FOUND,  # e.g. "requested lease not found"
    6: ErrorCode.ALREADY_EXISTS,
    7: ErrorCode.PERMISSION_DENIED,
    8: ErrorCode.RESOURCE_EXHAUSTED,
    9: ErrorCode.FAILED_PRECONDITION,
    10: ErrorCode.FAILED_PRECONDITION,  # ABORTED
    11: ErrorCode.FAILED_PRECONDITION,  # OUT_OF_RANGE: "required revision has been compacted"
    12: ErrorCode.FAILED_PRECONDITION,  # UNIMPLEMENTED
    13: ErrorCode.INTERNAL,
    14: ErrorCode.UNAVAILABLE,  # no leader, request timed out, stopping
    15: ErrorCode.INTERNAL,  # DATA_LOSS
    16: ErrorCode.UNAUTHENTICATED,
}

_AUTH_FAILURES = ("etcdserver: authentication failed", "etcdserver: user name is empty")

DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_WATCH_MESSAGE_BYTES = 1024 * 1024


def _error_from_body(status: int, body: bytes, endpoint: str) -> SpearError:
    """The SpearError for a non-200 gateway answer."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("code"), int):
        grpc_code: int = parsed["code"]
        message = str(parsed.get("message") or parsed.get("error") or "")[:500]
        code = _GRPC_TO_SPEAR.get(grpc_code, ErrorCode.INTERNAL)
        if message.startswith(_AUTH_FAILURES):  # etcd reports these as INVALID_ARGUMENT
            code = ErrorCode.UNAUTHENTICATED
        return SpearError(code, f"etcd: {message}", {"etcd_code": grpc_code, "endpoint": endpoint})
    code = ErrorCode.UNAVAILABLE if status >= 500 else ErrorCode.PROTOCOL_ERROR
    text = body[:200].decode("utf-8", "replace")
    return SpearError(code, f"etcd gateway answered HTTP {status}: {text!r}", {"endpoint": endpoint})


def _unreachable(endpoint: str, exc: BaseException | None) -> SpearError:
    reason = "no answer in time" if exc is None else f"{type(exc).__name__}: {exc}"[:300]
    return SpearError(ErrorCode.UNAVAILABLE, f"etcd at {endpoint} unreachable ({reason})", {"endpoint": endpoint})


def _garbled(endpoint: str, exc: BaseException) -> SpearError:
    return SpearError(
        ErrorCode.PROTOCOL_ERROR, f"etcd at {endpoint}: bad HTTP answer ({exc})"[:400], {"endpoint": endpoint}
    )


def _is_gateway_404(status: int, body: bytes) -> bool:
    """A 404 from the HTTP router (unknown path), not a gRPC NOT_FOUND carried as 404."""
    return status == 404 and not body.lstrip().startswith(b"{")


class EtcdClient:
    """A connection pool to one etcd cluster; use as ``async with EtcdClient([...]) as etcd``.

    *endpoints* are base URLs (``http://127.0.0.1:2379``; ``https://`` works with
    *verify*, an ``ssl.SSLContext`` or a CA bundle path). *username* / *password*
    enable etcd's own authentication (a token is fetched and renewed when refused).
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout_s: float = 2.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_watch_message_bytes: int = DEFAULT_MAX_WATCH_MESSAGE_BYTES,
        username: str | None = None,
        password: str | None = None,
        verify: Any = True,
    ) -> None:
        if not endpoints:
            raise SpearError(ErrorCode.INVALID_ARGUMENT, "etcd: at least one endpoint is needed")
        for endpoint in endpoints:
            if not endpoint.startswith(("http://", "https://")):
                raise SpearError(ErrorCode.INVALID_ARGUMENT, f"etcd endpoint must be http(s)://host:port: {endpoint!r}")
        if timeout_s <= 0:
            raise SpearError(ErrorCode.INVALID_ARGUMENT, "etcd: timeout_s must be positive")
        self.endpoints = [endpoint.rstrip("/") for endpoint in endpoints]
        self.timeout_s = timeout_s
        self.max_response_bytes = max_response_bytes
        self.max_watch_message_bytes = max_watch_message_bytes
        self._username = username
        self._password = password
        self._token: str | None = None
        self._current = 0
        self._api_prefix: str | None = None
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            verify=verify,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every pooled connection."""
        with trio.CancelScope(shield=True):
            await self._http.aclose()

    @property
    def api_prefix(self) -> str | None:
        """The gateway path prefix in use (``/v3`` on etcd 3.4+), once known."""
        return self._api_prefix

    # -- key/value --------------------------------------------------------------------

    async def put(self, key: Key, value: bytes, *, lease: int = 0, prev_kv: bool = False) -> PutResult:
        """Write *value* at *key* (bound to *lease* if non-zero; NOT_FOUND if the lease is gone)."""
        return PutResult.from_json(await self.call("/kv/put", Op.put(key, value, lease=lease, prev_kv=prev_kv).body))

    async def get(self, key: Key) -> KeyValue | None:
        """The key, or None if it does not exist."""
        result = await self.range(key)
        return result.kvs[0] if result.kvs else None

    async def range(
        self, key: Key, *, prefix: bool = False, limit: int = 0, revision: int = 0, count_only: bool = False
    ) -> RangeResult:
        """Read *key*, or every key starting with it when *prefix* (at most *limit*; 0 = all
        that fit in ``max_response_bytes``), at *revision* (0 = latest)."""
        body = range_body(to_bytes(key), prefix=prefix, limit=limit, revision=revision)
        if count_only:
            body["count_only"] = True
        return RangeResult.from_json(await self.call("/kv/range", body))

    async def delete(self, key: Key, *, prefix: bool = False, prev_kv: bool = False) -> DeleteResult:
        """Delete *key* (or every key starting with it when *prefix*)."""
        return DeleteResult.from_json(
            await self.call("/kv/deleterange", Op.delete(key, prefix=prefix, prev_kv=prev_kv).body)
        )

    async def txn(
        self, compare: Sequence[Compare], success: Sequence[Op] = (), failure: Sequence[Op] = ()
    ) -> TxnResult:
        """If every *compare* holds, run *success*, else *failure*, atomically."""
        body = {
            "compare": [c.to_json() for c in compare],
            "success": [op.to_json() for op in success],
            "failure": [op.to_json() for op in failure],
        }
        return TxnResult.from_json(await self.call("/kv/txn", body))

    # -- leases -----------------------------------------------------------------------

    async def lease_grant(self, ttl: int, lease_id: int = 0) -> Lease:
        """A new lease of *ttl* seconds (etcd may raise a TTL below its minimum)."""
        body: dict[str, Any] = {"TTL": str(ttl)}
        if lease_id:
            body["ID"] = str(lease_id)
        answer = await self.call("/lease/grant", body)
        if answer.get("error"):
            raise SpearError(ErrorCode.FAILED_PRECONDITION, f"etcd: lease grant refused: {str(answer['error'])[:200]}")
        granted = Lease(id=parse_int(answer.get("ID")), ttl=parse_int(answer.get("TTL")))
        if not granted.id:
            raise SpearError(ErrorCode.PROTOCOL_ERROR, "etcd: lease grant answered without an ID")
        return granted

    async def lease_keepalive(self, lease_id: int) -> int:
        """Renew the lease once; its new TTL. NOT_FOUND if it expired or was revoked."""
        answer = await self.call("/lease/keepalive", {"ID": str(lease_id)})
        result = answer.get("result")
        ttl = parse_int(result.get("TTL")) if isinstance(result, dict) else 0
        if ttl <= 0:
            raise SpearError(ErrorCode.NOT_FOUND, f"etcd: lease {lease_id:x} not found (expired or revoked)")
        return ttl

    async def lease_revoke(self, lease_id: int) -> None:
        """End the lease now; every key bound to it is deleted. NOT_FOUND if already gone."""
        await self.call("/lease/revoke", {"ID": str(lease_id)})

    async def lease_time_to_live(self, lease_id: int) -> int:
        """Seconds left on the lease; -1 if it does not exist (any more)."""
        answer = await self.call("/lease/timetolive", {"ID": str(lease_id)})
        ttl: int = parse_int(answer.get("TTL", -1))
        return ttl

    # -- watch ------------------------------------------------------------------------

    @asynccontextmanager
    async def watch(
        self, key: Key, *, prefix: bool = False, start_revision: int = 0, prev_kv: bool = False
    ) -> AsyncIterator[WatchStream]:
        """Watch *key* (or everything under it): ``async with etcd.watch(k) as stream:
        async for response in stream: ...``. The watch is established when the block
        starts (etcd confirmed it), so no change after that point is missed. From
        *start_revision* (0 = from now) etcd replays older changes first.

        The stream raises UNAVAILABLE when the connection breaks and FAILED_PRECONDITION
        (``details["compact_revision"]``) when *start_revision* was compacted away.
        """
        create = range_body(to_bytes(key), prefix=prefix)
        if start_revision:
            create["start_revision"] = str(start_revision)
        if prev_kv:
            create["prev_kv"] = True
        request = {"create_request": create}
        endpoint = await self._resolve_prefix()
        url = f"{endpoint}{self._api_prefix}/watch"
        # No read timeout: a quiet watch is normal. Opening it (headers and etcd's
        # confirmation) is bounded by the cancel scope below.
        timeout = httpx.Timeout(self.timeout_s, read=None)
        try:
            async with AsyncExitStack() as stack:
                with trio.move_on_after(self.timeout_s) as opening:
                    response = await stack.enter_async_context(self._exchange(url, request, timeout))
                    stream = WatchStream(response, endpoint, self.max_watch_message_bytes)
                    stack.push_async_callback(stream.aclose)
                    await stream.open()
                if opening.cancelled_caught:
                    raise _unreachable(endpoint, None)
                yield stream
        except httpx.TransportError as exc:
            raise _unreachable(endpoint, exc) from None
        except httpx.HTTPError as exc:
            raise _garbled(endpoint, exc) from None

    # -- plumbing ---------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"Authorization": self._token} if self._token else {}

    async def _resolve_prefix(self) -> str:
        """The endpoint to use; finds the gateway prefix (and logs in) on first use."""
        if self._api_prefix is None:
            await self.call("/maintenance/status", {})
        return self.endpoints[self._current]

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST *body* to the gateway method *path* (``/kv/range``…) and return the
        decoded answer; the whole call, failover included, takes at most ``timeout_s``."""
        with trio.move_on_after(self.timeout_s):
            return await self._call(path, body, may_login=True)
        raise _unreachable(self.endpoints[self._current], None)

    async def _call(self, path: str, body: dict[str, Any], *, may_login: bool) -> dict[str, Any]:
        if self._username is not None and self._token is None and path != "/auth/authenticate":
            await self._login()
        last_error: SpearError | None = None
        for _ in range(len(self.endpoints)):
            endpoint = self.endpoints[self._current]
            prefixes = (self._api_prefix,) if self._api_prefix else API_PREFIXES
            for api_prefix in prefixes:
                try:
                    status, raw = await self._post(f"{endpoint}{api_prefix}{path}", body)
                except httpx.ConnectError as exc:
                    last_error = _unreachable(endpoint, exc)
                    break  # this endpoint is down: try the next one
                except httpx.TransportError as exc:
                    # The request may have reached etcd: never re-send it elsewhere.
                    raise _unreachable(endpoint, exc) from None
                except httpx.HTTPError as exc:
                    raise _garbled(endpoint, exc) from None
                if _is_gateway_404(status, raw) and self._api_prefix is None:
                    continue  # this server does not serve that prefix
                self._api_prefix = api_prefix
                if status == 200:
                    return _decode(raw, endpoint)
                error = _error_from_body(status, raw, endpoint)
                if error.code is ErrorCode.UNAUTHENTICATED and may_login and self._username is not None:
                    self._token = None  # expired or revoked token: log in again, once
                    return await self._call(path, body, may_login=False)
                raise error
            else:
                raise SpearError(
                    ErrorCode.FAILED_PRECONDITION,
                    f"{endpoint} serves none of the etcd v3 gateway prefixes {list(API_PREFIXES)}",
                    {"endpoint": endpoint},
                )
            self._current = (self._current + 1) % len(self.endpoints)
        assert last_error is not None
        raise last_error

    async def _login(self) -> None:
        answer = await self._call(
            "/auth/authenticate", {"name": self._username, "password": self._password}, may_login=False
        )
        token = answer.get("token")
        if not isinstance(token, str) or not token:
            raise SpearError(ErrorCode.UNAUTHENTICATED, "etcd: authentication answered without a token")
        self._token = token

    @asynccontextmanager
    async def _exchange(
        self, url: str, body: dict[str, Any], timeout: httpx.Timeout | None = None
    ) -> AsyncIterator[httpx.Response]:
        """POST *body* as JSON; the response with its body still to read."""
        data = json.dumps(body, separators=(",", ":")).encode()
        request = self._http.build_request(
            "POST",
            url,
            content=data,
            headers={**self._headers(), "Content-Type": "application/json"},
            timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
        )
        request.stream = _Body(data)
        response = await self._http.send(request, stream=True)
        try:
            yield response
        finally:
            with trio.CancelScope(shield=True):
                await response.aclose()

    async def _post(self, url: str, body: dict[str, Any]) -> tuple[int, bytes]:
        """One POST; the answer's bytes, at most ``max_response_bytes``."""
        async with self._exchange(url, body) as response:
            chunks = _raw_chunks(response)
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_response_bytes:
                await _abandon(response, chunks)
                raise _too_large(self.max_response_bytes)
            data = bytearray()
            async for chunk in chunks:
                data += chunk
                if len(data) > self.max_response_bytes:
                    await _abandon(response, chunks)
                    raise _too_large(self.max_response_bytes)
            return response.status_code, bytes(data)


class _Body(httpx.AsyncByteStream):
    """A request body in one chunk. httpx's own is an async generator, and a send that
    fails half-way (a TLS peer hanging up) leaves it suspended: under trio that warns
    when it is collected. This one is a plain iterator."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _OneChunk(self._data)


class _OneChunk:
    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def __aiter__(self) -> _OneChunk:
        return self

    async def __anext__(self) -> bytes:
        if self._data is None:
            raise StopAsyncIteration
        data, self._data = self._data, None
        return data


def _raw_chunks(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    """The response body's chunks. httpx builds this from nested async generators;
    one left suspended warns when collected, so stop early only via :func:`_abandon`."""
    return response.aiter_raw()  # type: ignore[return-value]


async def _abandon(response: httpx.Response, chunks: AsyncGenerator[bytes, None]) -> None:
    """Stop reading *response* before its end: close the connection, then step the
    chunk generator once more so the error of reading a closed connection runs through
    (and finishes) every nested generator of httpx and httpcore."""
    with trio.CancelScope(shield=True):
        await response.aclose()
        try:
            async for _ in chunks:
                pass
        except Exception:
            pass  # the expected "connection closed" error; the generators are done


def _too_large(limit: int) -> SpearError:
    return SpearError(
        ErrorCode.RESOURCE_EXHAUSTED, f"etcd answer exceeds {limit} bytes (narrow the range or raise the limit)"
    )


def _decode(raw: bytes, endpoint: str) -> dict[str, Any]:
    try:
        parsed = json.loads(raw)
    except ValueError:
        raise SpearError(ErrorCode.PROTOCOL_ERROR, f"etcd at {endpoint} answered with non-JSON") from None
    if not isinstance(parsed, dict):
        raise SpearError(ErrorCode.PROTOCOL_ERROR, f"etcd at {endpoint} answered with a non-object")
    return parsed


class WatchStream:
    """The messages of one watch, in order (see :meth:`EtcdClient.watch`)."""

    def __init__(self, response: httpx.Response, endpoint: str, max_message_bytes: int) -> None:
        self._response = response
        self._endpoint = endpoint
        self._max = max_message_bytes
        self._chunks = _raw_chunks(response)
        self._buffer = bytearray()
        self.revision = 0
        """The revision of the last message seen (resume a broken watch from ``revision + 1``)."""

    async def open(self) -> None:
        """Wait for etcd's confirmation that the watch exists."""
        if self._response.status_code != 200:
            body = await self._read_error_body()
            raise _error_from_body(self._response.status_code, body, self._endpoint)
        first = await self._next_message()
        if not first.created:
            raise SpearError(ErrorCode.PROTOCOL_ERROR, "etcd watch: first message is not the creation")
        self.revision = first.revision

    async def aclose(self) -> None:
        """Stop reading and close the connection (etcd cancels the watch)."""
        await _abandon(self._response, self._chunks)

    def __aiter__(self) -> WatchStream:
        return self

    async def __anext__(self) -> WatchResponse:
        message = await self._next_message()
        if message.canceled:
            if message.compact_revision:
                raise SpearError(
                    ErrorCode.FAILED_PRECONDITION,
                    f"etcd watch: revisions up to {message.compact_revision} were compacted",
                    {"compact_revision": message.compact_revision},
                )
            raise SpearError(ErrorCode.UNAVAILABLE, f"etcd cancelled the watch: {message.cancel_reason or 'no reason'}")
        if message.revision:
            self.revision = message.revision
        return message

    async def _read_error_body(self) -> bytes:
        data = bytearray()
        async for chunk in self._chunks:
            data += chunk
            if len(data) > 64 * 1024:
                await _abandon(self._response, self._chunks)
                break
        return bytes(data)

    async def _next_message(self) -> WatchResponse:
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                if not line.strip():
                    continue
                return self._parse(line)
            if len(self._buffer) > self._max:
                raise SpearError(ErrorCode.RESOURCE_EXHAUSTED, f"etcd watch message exceeds {self._max} bytes")
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                if self._buffer.strip():
                    line = bytes(self._buffer)
                    self._buffer.clear()
                    return self._parse(line)
                raise SpearError(ErrorCode.UNAVAILABLE, f"etcd at {self._endpoint} closed the watch") from None
            except httpx.TransportError as exc:
                raise _unreachable(self._endpoint, exc) from None
            except httpx.HTTPError as exc:
                raise _garbled(self._endpoint, exc) from None
            self._buffer += chunk

    def _parse(self, line: bytes) -> WatchResponse:
        message = _decode(line, self._endpoint)
        if "error" in message and "result" not in message:
            raise _error_from_body(500, line, self._endpoint)
        return WatchResponse.from_json(message.get("result"))

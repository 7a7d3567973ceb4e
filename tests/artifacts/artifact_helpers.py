"""Test helpers: a tiny HTTP/1.1 artifact server on trio, and archive builders."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import ssl
import stat
import tarfile
import zipfile
from http import HTTPStatus

import trio

# A minimal valid WASM module: magic + version 1, no sections.
WASM_MODULE = b"\0asm\x01\x00\x00\x00"


def sha(data: bytes) -> str:
    """sha256 hex of *data*."""
    return hashlib.sha256(data).hexdigest()


@dataclasses.dataclass
class Route:
    """What the server answers for one path."""

    body: bytes = b""
    status: int = 200
    failures: list[int] = dataclasses.field(default_factory=list)
    """Statuses answered (one per request, in order) before the real response."""
    content_length: bool = True
    """False: close-delimited body (no Content-Length)."""
    claim_length: int | None = None
    """Announce this Content-Length instead of the real one (a truncated body)."""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    failure_headers: dict[str, str] = dataclasses.field(default_factory=dict)
    """Extra headers of the failure responses (e.g. Retry-After)."""
    stall_after: int | None = None
    """Send this many body bytes, then wait for :attr:`ArtifactServer.release`."""


class ArtifactServer:
    """Serves :class:`Route` s on 127.0.0.1 and counts requests per path.

    One request per connection (``Connection: close``), which is all httpx needs.
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        """Serve https with this server-side context."""
        self.connections = 0
        """Connections accepted (TLS handshakes included, failed or not)."""
        self.routes: dict[str, Route] = {}
        self.hits: collections.Counter[str] = collections.Counter()
        self.gate: trio.Event | None = None
        """When set to an Event, responses wait for it (to hold a download open)."""
        self.release = trio.Event()
        """Lets stalled responses (:attr:`Route.stall_after`) finish."""
        self.port = 0
        self._scope: trio.CancelScope | None = None

    def url(self, path: str) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def serve(self, path: str, body: bytes, **route: object) -> str:
        """Add a route; return its URL."""
        self.routes[path] = Route(body, **route)  # type: ignore[arg-type]
        return self.url(path)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as self._scope:
            tcp = await trio.open_tcp_listeners(0, host="127.0.0.1")
            self.port = tcp[0].socket.getsockname()[1]
            listeners: list[trio.abc.Listener[trio.abc.Stream]] = list(tcp)
            if self.tls is not None:
                listeners = [trio.SSLListener(listener, self.tls, https_compatible=True) for listener in tcp]
            task_status.started()
            await trio.serve_listeners(self._handle, listeners)

    def stop(self) -> None:
        """Stop listening (new connections are refused)."""
        assert self._scope is not None
        self._scope.cancel()

    async def _handle(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        async with stream:
            buffer = b""
            while b"\r\n\r\n" not in buffer:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:  # a failed TLS handshake
                    return
                if not data:
                    return
                buffer += data
            path = buffer.split(b"\r\n", 1)[0].split(b" ")[1].decode()
            self.hits[path] += 1
            if self.gate is not None:
                await self.gate.wait()
            route = self.routes.get(path)
            if route is None:
                await self._send(stream, 404, b"not found\n", {})
            elif route.failures:
                await self._send(stream, route.failures.pop(0), b"try later\n", route.failure_headers)
            else:
                headers = dict(route.headers)
                if not route.content_length:
                    headers["content-length"] = ""  # an empty value drops the header
                elif route.claim_length is not None:
                    headers["content-length"] = str(route.claim_length)
                await self._send(stream, route.status, route.body, headers, route.stall_after)

    async def _send(
        self, stream: trio.abc.Stream, status: int, body: bytes, headers: dict[str, str], stall: int | None = None
    ) -> None:
        fields = {"content-length": str(len(body)), "connection": "close", **headers}
        head = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in fields.items() if v)
        data = head.encode() + b"\r\n" + body
        split = len(data) - len(body) + (len(body) if stall is None else stall)
        try:
            await stream.send_all(data[:split])
            if split < len(data):
                await self.release.wait()
                await stream.send_all(data[split:])
        except trio.BrokenResourceError:  # the client gave up first (size cap, cancel)
            pass


# -- archives -------------------------------------------------------------------------


def tar_gz(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    """A .tar.gz of hand-made members (names are kept as given, even hostile ones)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def tar_file(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def tar_dir(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, None


def tar_link(name: str, target: str, *, hard: bool = False) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info, None


def tar_special(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    return info, None


def zip_bytes(*members: tuple[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    """A .zip of (name, data) members plus Unix symlinks (name → target)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFREG | 0o755) << 16
            zf.writestr(info, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return out.getvalue()

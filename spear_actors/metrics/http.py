"""A small HTTP/1.1 listener (h11, under trio) that answers ``GET /metrics`` with the
Prometheus text exposition of a registry. Bounded: a request must arrive within
5 s and fit in 16 KiB; at most 16 scrapes are served at once (more wait in the
kernel's accept queue)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final
from urllib.parse import urlsplit

import h11
import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ..errors import ErrorCode, SpearError

__all__ = ["parse_metrics_url", "serve_metrics"]

log = logging.getLogger(__name__)

_REQUEST_TIMEOUT: Final = 5.0
_MAX_REQUEST_BYTES: Final = 16 * 1024
_MAX_SCRAPES: Final = 16


def parse_metrics_url(url: str) -> tuple[str, int, str]:
    """``http://host:port[/path]`` → (host, port, path); INVALID_ARGUMENT otherwise."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None:
        raise SpearError(ErrorCode.INVALID_ARGUMENT, f"metrics_listen {url!r}: expected http://host:port[/path]")
    return parts.hostname, port, parts.path or "/metrics"


async def serve_metrics(
    url: str,
    registry: CollectorRegistry,
    before_scrape: Callable[[], Awaitable[None]],
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve *registry* at *url* until cancelled; *before_scrape* refreshes the gauges.
    ``task_status`` gets the bound URL (the real port for port 0)."""
    host, port, path = parse_metrics_url(url)
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise SpearError(ErrorCode.UNAVAILABLE, f"cannot listen on {url}: {exc.strerror or exc}") from None
    bound = listeners[0].socket.getsockname()[1]
    limiter = trio.CapacityLimiter(_MAX_SCRAPES)

    async def handle(stream: trio.SocketStream) -> None:
        async with limiter:
            try:
                with trio.move_on_after(_REQUEST_TIMEOUT):
                    await _answer(stream, path, registry, before_scrape)
            except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError, OSError) as exc:
                log.debug("metrics scrape ended: %r", exc)
            finally:
                await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        host_text = f"[{host}]" if ":" in host else host
        task_status.started(f"http://{host_text}:{bound}{path}")


async def _answer(
    stream: trio.SocketStream, path: str, registry: CollectorRegistry, before_scrape: Callable[[], Awaitable[None]]
) -> None:
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_REQUEST_BYTES)
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_MAX_REQUEST_BYTES)
            connection.receive_data(data)
            if not data:
                return
            continue
        if isinstance(event, h11.Request):
            break
        return
    target = event.target.decode("ascii", "replace").split("?", 1)[0]
    if event.method != b"GET" or target != path:
        status, body, kind = 404, f"not found; metrics are at {path}\n".encode(), b"text/plain; charset=utf-8"
    else:
        await before_scrape()
        status, body, kind = 200, generate_latest(registry), CONTENT_TYPE_LATEST.encode()
    headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    await stream.send_all(connection.send(h11.Response(status_code=status, headers=headers)) or b"")
    await stream.send_all(connection.send(h11.Data(data=body)) or b"")
    await stream.send_all(connection.send(h11.EndOfMessage()) or b"")

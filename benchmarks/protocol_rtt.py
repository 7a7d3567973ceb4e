"""Request/reply latency and throughput of the wire protocol against a raw baseline.

For each transport (tcp, unix, ws) it measures, in the same run:

* **raw**: bare trio sockets (or bare trio-websocket) carrying the same 8-byte
  length framing (one binary message per body on websocket) and the same msgpack
  request/response maps, echoed by a server with no correlation layer: the client
  keeps *k* requests pipelined and answers come back in order. Each frame is
  written with its own ``send_all`` (``send_message`` on websocket);
* **raw+batch** (tcp and unix only): the same, but every side coalesces what it has
  to write (all answers to one received chunk; all requests it refills) into one
  ``send_all``, the best a single task can do on one socket;
* **protocol**: :func:`open_connection` / :func:`accept_connection` with an echo
  handler; *k* tasks each call ``connection.request("echo", i)`` in a loop.

Figures: sequential round trip p50/p99 (one request at a time), and throughput
(requests per second) with 1, 8 and 64 requests in flight on one connection. The
server runs in a separate process, so client and server each have their own loop.
Every layer is measured in several interleaved rounds and the best round is kept
(lowest latency, highest throughput), so that load from other processes on the
machine hits raw and protocol alike instead of skewing one of them.

    python benchmarks/protocol_rtt.py            # about 45 s
    python benchmarks/protocol_rtt.py --quick    # about 15 s (or SPEAR_BENCH_QUICK=1)

Targets (issue 2): sequential p50 within 1.3x of raw; throughput at 64 in flight at
least 0.6x of raw.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import trio
import trio_websocket

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spear_actors.protocol.calls import IncomingRequest
from spear_actors.protocol.handshake import accept_connection, open_connection
from spear_actors.protocol.messages import Hello
from spear_actors.protocol.transports import Transport, open_transport, serve_endpoint

TRANSPORTS = ("tcp", "unix", "ws")
INFLIGHT = (1, 8, 64)
SEQ_P50_TARGET = 1.3
THROUGHPUT_64_TARGET = 0.6
_HEADER = struct.Struct("<Q")
_RECEIVE = 64 * 1024  # trio's default; 128 KiB or more costs an mmap per read here


# -- raw baseline: framing + msgpack, nothing else --------------------------------------


def _request_body(i: int) -> bytes:
    return msgpack.packb({"type": "request", "id": i, "method": "echo", "params": i})  # type: ignore[no-any-return]


def _answer(body: bytes) -> bytes:
    request = msgpack.unpackb(body)
    return msgpack.packb({"type": "response", "id": request["id"], "result": request["params"]})  # type: ignore[no-any-return]


def _frame(body: bytes) -> bytes:
    return _HEADER.pack(len(body)) + body


class _Frames:
    """A minimal frame splitter for the raw baseline (no limits, no close frame)."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def bodies(self, data: bytes) -> list[bytes]:
        buffer = self.buffer
        buffer += data
        out = []
        start = 0
        while len(buffer) - start >= 8:
            (length,) = _HEADER.unpack_from(buffer, start)
            end = start + 8 + length
            if end > len(buffer):
                break
            out.append(bytes(buffer[start + 8 : end]))
            start = end
        del buffer[:start]
        return out


async def _raw_stream_server(stream: trio.abc.Stream, batched: bool) -> None:
    frames = _Frames()
    async with stream:
        while data := await stream.receive_some(_RECEIVE):
            if batched:
                replies = [_frame(_answer(body)) for body in frames.bodies(data)]
                if replies:
                    await stream.send_all(b"".join(replies))
            else:
                for body in frames.bodies(data):
                    await stream.send_all(_frame(_answer(body)))


async def _raw_ws_server(request: trio_websocket.WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        while True:
            body = await ws.get_message()
            await ws.send_message(_answer(body))
    except trio_websocket.ConnectionClosed:
        pass


class RawClient:
    """Sends request bodies and reads answers in order, over a stream or a websocket."""

    def __init__(self, send: Callable[[list[bytes]], Awaitable[None]], receive: Callable[[], Awaitable[list[bytes]]]):
        self.send = send
        self.receive = receive

    async def call(self, i: int) -> None:
        await self.send([_request_body(i)])
        while not await self.receive():
            pass

    async def pipelined(self, inflight: int, duration: float) -> int:
        """Keep *inflight* requests outstanding for *duration* s; return answers received."""
        await self.send([_request_body(i) for i in range(inflight)])
        outstanding = inflight
        done = 0
        stop_at = trio.current_time() + duration
        while outstanding:
            answers = await self.receive()
            done += len(answers)
            outstanding -= len(answers)
            if trio.current_time() < stop_at:
                await self.send([_request_body(done + k) for k in range(len(answers))])
                outstanding += len(answers)
        return done


async def _raw_stream_client(stream: trio.abc.Stream, batched: bool) -> RawClient:
    frames = _Frames()

    async def send(bodies: list[bytes]) -> None:
        if batched:
            await stream.send_all(b"".join(_frame(b) for b in bodies))
        else:
            for body in bodies:
                await stream.send_all(_frame(body))

    async def receive() -> list[bytes]:
        return frames.bodies(await stream.receive_some(_RECEIVE))

    return RawClient(send, receive)


def _raw_ws_client(ws: trio_websocket.WebSocketConnection) -> RawClient:
    async def send(bodies: list[bytes]) -> None:
        for body in bodies:
            await ws.send_message(body)

    async def receive() -> list[bytes]:
        return [await ws.get_message()]

    return RawClient(send, receive)


# -- protocol ---------------------------------------------------------------------------


async def _echo(request: IncomingRequest) -> Any:
    return request.params


async def _proto_on_transport(transport: Transport) -> None:
    async with accept_connection(transport, handler=_echo) as connection:
        await connection.wait_closed()


# -- servers (run in a child process) -----------------------------------------------------


async def _serve(kind: str, url: str) -> None:
    if kind == "proto":
        async with trio.open_nursery() as nursery:
            endpoint = await nursery.start(serve_endpoint, url, _proto_on_transport)
            print(endpoint, flush=True)
        return
    if url.startswith("ws://"):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                lambda task_status: trio_websocket.serve_websocket(
                    _raw_ws_server, "127.0.0.1", 0, None, message_queue_size=64, task_status=task_status
                )
            )
            print(f"ws://127.0.0.1:{server.port}", flush=True)
        return
    handler = partial(_raw_stream_server, batched=kind == "raw+batch")
    if url.startswith("tcp://"):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        print(f"tcp://127.0.0.1:{listeners[0].socket.getsockname()[1]}", flush=True)
    else:
        path = url.removeprefix("unix://")
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.bind(path)
        sock.listen(16)
        listeners = [trio.SocketListener(sock)]
        print(url, flush=True)
    await trio.serve_listeners(handler, listeners)


# -- measurements -----------------------------------------------------------------------


@dataclasses.dataclass
class Figures:
    p50_us: float = 0.0
    p99_us: float = 0.0
    rps: dict[int, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Settings:
    seq_requests: int
    seconds: float
    warmup: int
    rounds: int


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _sequential(call: Callable[[int], Awaitable[Any]], settings: Settings, figures: Figures) -> None:
    for i in range(settings.warmup):
        await call(i)
    samples = []
    clock = time.perf_counter_ns
    for i in range(settings.seq_requests):
        start = clock()
        await call(i)
        samples.append((clock() - start) / 1000)
    figures.p50_us = statistics.median(samples)
    figures.p99_us = _percentile(samples, 0.99)


async def _measure_raw(url: str, settings: Settings, batched: bool) -> Figures:
    figures = Figures()
    if url.startswith("ws://"):
        host_port = url.removeprefix("ws://")
        async with trio_websocket.open_websocket_url(f"ws://{host_port}/", message_queue_size=64) as ws:
            client = _raw_ws_client(ws)
            await _raw_measurements(client, settings, figures)
        return figures
    if url.startswith("tcp://"):
        host, port = url.removeprefix("tcp://").rsplit(":", 1)
        stream: trio.abc.Stream = await trio.open_tcp_stream(host, int(port))
    else:
        stream = await trio.open_unix_socket(url.removeprefix("unix://"))
    async with stream:
        client = await _raw_stream_client(stream, batched)
        await _raw_measurements(client, settings, figures)
    return figures


async def _raw_measurements(client: RawClient, settings: Settings, figures: Figures) -> None:
    await _sequential(client.call, settings, figures)
    for inflight in INFLIGHT:
        await client.pipelined(inflight, settings.seconds / 5)  # warm-up
        start = trio.current_time()
        done = await client.pipelined(inflight, settings.seconds)
        figures.rps[inflight] = done / (trio.current_time() - start)


async def _measure_proto(url: str, settings: Settings) -> Figures:
    figures = Figures()
    async with open_transport(url) as transport, open_connection(transport, Hello(role="bench")) as connection:
        await _sequential(lambda i: connection.request("echo", i), settings, figures)
        for inflight in INFLIGHT:
            for seconds in (settings.seconds / 5, settings.seconds):  # warm-up, then measure
                done = 0
                stop_at = trio.current_time() + seconds

                async def worker(stop_at: float) -> None:
                    nonlocal done
                    i = 0
                    while trio.current_time() < stop_at:
                        await connection.request("echo", i)
                        i += 1
                        done += 1

                start = trio.current_time()
                async with trio.open_nursery() as nursery:
                    for _ in range(inflight):
                        nursery.start_soon(worker, stop_at)
                figures.rps[inflight] = done / (trio.current_time() - start)
    return figures


@contextlib.contextmanager
def _server(kind: str, url: str) -> Iterator[str]:
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--url", url],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        endpoint = server.stdout.readline().strip()
        if not endpoint:
            raise RuntimeError(f"{kind} server for {url} did not start")
        yield endpoint
    finally:
        server.terminate()
        server.wait(10)


def _measure(layer: str, endpoint: str, settings: Settings) -> Figures:
    if layer == "protocol":
        return trio.run(_measure_proto, endpoint, settings)
    return trio.run(_measure_raw, endpoint, settings, layer == "raw+batch")


def _best(a: Figures | None, b: Figures) -> Figures:
    if a is None:
        return b
    return Figures(
        p50_us=min(a.p50_us, b.p50_us),
        p99_us=min(a.p99_us, b.p99_us),
        rps={k: max(a.rps[k], b.rps[k]) for k in INFLIGHT},
    )


def _measure_transport(transport: str, tmp: str, settings: Settings) -> dict[str, Figures]:
    layers = ["raw", "raw+batch", "protocol"] if transport != "ws" else ["raw", "protocol"]
    best: dict[str, Figures | None] = dict.fromkeys(layers)
    with contextlib.ExitStack() as stack:
        endpoints = {}
        for n, layer in enumerate(layers):
            url = f"unix://{tmp}/{n}.sock" if transport == "unix" else f"{transport}://127.0.0.1:0"
            kind = "proto" if layer == "protocol" else layer
            endpoints[layer] = stack.enter_context(_server(kind, url))
        for _ in range(settings.rounds):
            for layer in layers:
                best[layer] = _best(best[layer], _measure(layer, endpoints[layer], settings))
    return {layer: figures for layer, figures in best.items() if figures is not None}


# -- report ------------------------------------------------------------------------------


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))


def _report(results: dict[str, dict[str, Figures]]) -> None:
    header = ["transport", "layer", "seq p50 us", "seq p99 us", *[f"rps @{k}" for k in INFLIGHT]]
    widths = [9, 16, 10, 10, 9, 9, 9]
    lines = [_row(header, widths), _row(["-" * w for w in widths], widths)]
    verdicts = []
    for transport, layers in results.items():
        proto = layers["protocol"]
        for layer, f in layers.items():
            lines.append(
                _row(
                    [transport, layer, f"{f.p50_us:.1f}", f"{f.p99_us:.1f}", *[f"{f.rps[k]:,.0f}" for k in INFLIGHT]],
                    widths,
                )
            )
        for layer, base in layers.items():
            if layer == "protocol":
                continue
            ratios = [
                proto.p50_us / base.p50_us,
                proto.p99_us / base.p99_us,
                *[proto.rps[k] / base.rps[k] for k in INFLIGHT],
            ]
            lines.append(_row([transport, f"protocol/{layer}", *[f"{r:.2f}x" for r in ratios]], widths))
            seq_ok = ratios[0] <= SEQ_P50_TARGET
            tput_ok = ratios[-1] >= THROUGHPUT_64_TARGET
            verdicts.append(
                f"{transport:5} vs {layer:9}  seq p50 {ratios[0]:.2f}x (target <= {SEQ_P50_TARGET}x): "
                f"{'met' if seq_ok else 'MISSED'};  rps@64 {ratios[-1]:.2f}x "
                f"(target >= {THROUGHPUT_64_TARGET}x): {'met' if tput_ok else 'MISSED'}"
            )
    print("\n".join(lines))
    print()
    print("\n".join(verdicts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        default=bool(os.environ.get("SPEAR_BENCH_QUICK")),
        help="shorter runs (also: SPEAR_BENCH_QUICK=1)",
    )
    parser.add_argument("--transports", default=",".join(TRANSPORTS), help="comma-separated: tcp,unix,ws")
    parser.add_argument("--seconds", type=float, help="duration of each throughput run")
    parser.add_argument("--seq", type=int, help="number of sequential requests timed")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per layer; the best is kept")
    parser.add_argument("--serve", choices=["raw", "raw+batch", "proto"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(_serve, args.serve, args.url)
        return
    settings = Settings(
        seq_requests=args.seq or (1000 if args.quick else 2000),
        seconds=args.seconds or (0.25 if args.quick else 0.4),
        warmup=200 if args.quick else 500,
        rounds=args.rounds or (2 if args.quick else 3),
    )
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    print(
        f"python {sys.version.split()[0]}, trio {trio.__version__}, {os.cpu_count()} CPUs; "
        f"{settings.seq_requests} sequential requests, {settings.seconds:g} s per throughput run, "
        f"best of {settings.rounds} interleaved rounds"
    )
    started = time.monotonic()
    results: dict[str, dict[str, Figures]] = {}
    with tempfile.TemporaryDirectory(prefix="spear-bench-") as tmp:
        for transport in transports:
            results[transport] = _measure_transport(transport, tmp, settings)
    print()
    _report(results)
    print(f"\n({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()

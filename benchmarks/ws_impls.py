"""Three websocket implementations under trio, side by side (issue 15).

* **trio-websocket**: ``trio_websocket`` as the project used it before issue 15
  (a reader task per connection hands each message to ``get_message`` over a memory
  channel; ``send_message`` takes a lock);
* **wsproto-direct**: a connection that drives wsproto from the task that receives
  (it reads the socket and feeds wsproto itself: no reader task, no channel
  hand-off), ``benchmarks/_ws_wsproto.py``;
* **websockets-sansio**: the sans-IO core of the ``websockets`` library
  (``ServerProtocol`` / ``ClientProtocol``, with its C speedups) driven by trio the
  same way: the project's :class:`~spear_actors.protocol.wsconnection.WebsocketConnection`,
  chosen by these figures. Skipped with a message when ``websockets`` is not
  installed.

Both direct connections run the server side behind the gateway's ``FrameGuard``
(``NowaitWriter`` on the client), as the node serves it.

Each server runs in its own process (echo of every binary message; ``?cpu`` answers
the server's ``time.process_time()``) and each round's client in another, so
neither shares a loop or a core's time slice with the other by construction. Per
implementation and round: sequential request/response echo of a 60-byte binary
message (p50/p99), messages/s with 64 in flight on one connection (one task sends
while a window of 64 allows, one receives), and the server's CPU per message in
each phase. Rounds are interleaved (the order rotates each round); the table
prints the median and [range] over rounds.

    python benchmarks/ws_impls.py            # 5 rounds, n = 3,000 / 20,000 (~1 min)
    python benchmarks/ws_impls.py --quick    # 3 rounds, n = 1,000 / 6,000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._timing import p50_p99

IMPLS = ("trio-websocket", "wsproto-direct", "websockets-sansio")
MESSAGE = b"\x85\xa4type\xa7request\xa2id\x01\xa6method\xa4echo\xa6params" + b"x" * 23  # 60 bytes
CPU_QUERY = b"?cpu"
MAX_SIZE = 16 * 1024 * 1024
IN_FLIGHT = 64


def websockets_available() -> bool:
    try:
        import websockets.client
        import websockets.server  # noqa: F401
    except ImportError:
        return False
    return True


# -- one interface for the three client and server connections -------------------------


class Conn(Protocol):
    async def send(self, data: bytes) -> None: ...
    async def receive(self) -> bytes: ...
    async def close(self) -> None: ...


class TrioWebsocketConn:
    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send(self, data: bytes) -> None:
        await self.ws.send_message(data)

    async def receive(self) -> bytes:
        message = await self.ws.get_message()
        assert isinstance(message, bytes)
        return message

    async def close(self) -> None:
        await self.ws.aclose()


class DirectConn:
    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send(self, data: bytes) -> None:
        await self.ws.send_message(data)

    async def receive(self) -> bytes:
        message = await self.ws.receive_message()
        if not isinstance(message, bytes):
            raise EOFError(repr(message))
        return message

    async def close(self) -> None:
        await self.ws.aclose()


# -- servers --------------------------------------------------------------------------------


async def _echo(conn: Conn) -> None:
    try:
        while True:
            message = await conn.receive()
            if message == CPU_QUERY:
                await conn.send(repr(time.process_time()).encode())
            else:
                await conn.send(message)
    except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    except Exception as exc:  # trio-websocket's ConnectionClosed and friends
        if type(exc).__name__ != "ConnectionClosed":
            raise


async def serve(impl: str) -> None:
    async with trio.open_nursery() as nursery:
        if impl == "trio-websocket":
            import trio_websocket

            async def on_request(request: Any) -> None:
                ws = await request.accept()
                await _echo(TrioWebsocketConn(ws))

            server = await nursery.start(
                trio_websocket.serve_websocket,
                on_request,
                "127.0.0.1",
                0,
                None,  # type: ignore[arg-type]
            )
            port = server.port
        else:

            async def on_stream(stream: trio.SocketStream) -> None:
                import socket

                stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn: Conn
                from spear_actors.protocol.wsguard import FrameGuard

                guarded = FrameGuard(stream, MAX_SIZE)
                if impl == "wsproto-direct":
                    from benchmarks._ws_wsproto import accept_websocket as accept_wsproto

                    conn = DirectConn(await accept_wsproto(guarded, max_message_size=MAX_SIZE))
                else:
                    from spear_actors.protocol.wsconnection import accept_websocket

                    conn = DirectConn(await accept_websocket(guarded, max_message_size=MAX_SIZE))
                await _echo(conn)

            listeners = await nursery.start(trio.serve_tcp, on_stream, 0)
            port = next(lst.socket.getsockname()[1] for lst in listeners if lst.socket.family == 2)
        print(port, flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)  # until the parent closes our stdin
        nursery.cancel_scope.cancel()


# -- clients ----------------------------------------------------------------------------------


async def connect(impl: str, port: int, nursery: trio.Nursery) -> Conn:
    if impl == "trio-websocket":
        import trio_websocket

        ws = await trio_websocket.connect_websocket(nursery, "127.0.0.1", port, "/", use_ssl=False)
        return TrioWebsocketConn(ws)
    import socket

    stream = await trio.open_tcp_stream("127.0.0.1", port)
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    from spear_actors.protocol.wsguard import NowaitWriter

    if impl == "wsproto-direct":
        from benchmarks._ws_wsproto import connect_websocket as connect_wsproto

        ws: Any = await connect_wsproto(NowaitWriter(stream), f"127.0.0.1:{port}", "/", max_message_size=MAX_SIZE)
    else:
        from spear_actors.protocol.wsconnection import connect_websocket

        ws = await connect_websocket(NowaitWriter(stream), f"127.0.0.1:{port}", "/", max_message_size=MAX_SIZE)
    return DirectConn(ws)


async def _server_cpu(conn: Conn) -> float:
    await conn.send(CPU_QUERY)
    return float(await conn.receive())


async def _pipelined(conn: Conn, total: int) -> float:
    window = trio.Semaphore(IN_FLIGHT)

    async def sender() -> None:
        for _ in range(total):
            await window.acquire()
            await conn.send(MESSAGE)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        for _ in range(total):
            await conn.receive()
            window.release()
    return total / (time.perf_counter() - start)


async def client(impl: str, port: int, n: int, total: int) -> dict[str, float]:
    async with trio.open_nursery() as nursery:
        conn = await connect(impl, port, nursery)

        async def echo() -> None:
            await conn.send(MESSAGE)
            await conn.receive()

        for _ in range(min(500, n // 5)):
            await echo()
        cpu0, own0 = await _server_cpu(conn), time.process_time()
        samples: list[float] = []
        for _ in range(n):
            started = time.perf_counter()
            await echo()
            samples.append(time.perf_counter() - started)
        cpu1, own1 = await _server_cpu(conn), time.process_time()
        rate = await _pipelined(conn, total)
        cpu2, own2 = await _server_cpu(conn), time.process_time()
        await conn.close()
        nursery.cancel_scope.cancel()
    p50, p99 = p50_p99(samples)
    return {
        "p50_us": p50 * 1e6,
        "p99_us": p99 * 1e6,
        "per_s": rate,
        "server_cpu_seq_us": (cpu1 - cpu0) / (n + 1) * 1e6,
        "server_cpu_64_us": (cpu2 - cpu1) / (total + 1) * 1e6,
        "client_cpu_seq_us": (own1 - own0) / n * 1e6,
        "client_cpu_64_us": (own2 - own1) / total * 1e6,
    }


# -- the parent: servers, interleaved rounds, the table -----------------------------------------


def _run(rounds: int, n: int, total: int) -> None:
    impls = [impl for impl in IMPLS if impl != "websockets-sansio" or websockets_available()]
    if "websockets-sansio" not in impls:
        print("websockets-sansio: skipped, the `websockets` package is not installed (pip install websockets)")
    here = str(Path(__file__).resolve())
    servers: dict[str, tuple[subprocess.Popen[str], int]] = {}
    try:
        for impl in impls:
            process = subprocess.Popen(
                [sys.executable, here, "--serve", impl], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            assert process.stdout is not None
            servers[impl] = (process, int(process.stdout.readline()))
        results: dict[str, list[dict[str, float]]] = {impl: [] for impl in impls}
        for round_ in range(rounds):
            order = impls[round_ % len(impls) :] + impls[: round_ % len(impls)]
            for impl in order:
                client_command = [sys.executable, here, "--client"]
                out = subprocess.run(
                    [*client_command, impl, "--port", str(servers[impl][1]), "--n", str(n), "--total", str(total)],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                results[impl].append(json.loads(out))
                row = results[impl][-1]
                print(
                    f"round {round_ + 1} {impl:18} p50 {row['p50_us']:7.1f} µs  {row['per_s']:9.0f}/s @64  "
                    f"server CPU {row['server_cpu_seq_us']:5.1f} / {row['server_cpu_64_us']:5.1f} µs per message",
                    flush=True,
                )
    finally:
        for process, _ in servers.values():
            assert process.stdin is not None
            process.stdin.close()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    _table(results, rounds, n, total)


def _cell(values: list[float], digits: int = 1) -> str:
    return f"{statistics.median(values):,.{digits}f} [{min(values):,.{digits}f}-{max(values):,.{digits}f}]"


def _table(results: dict[str, list[dict[str, float]]], rounds: int, n: int, total: int) -> None:
    print(
        f"\n{len(MESSAGE)}-byte binary echo, {rounds} interleaved rounds (median [range]), "
        f"n = {n:,} sequential, {total:,} at {IN_FLIGHT} in flight"
    )
    columns = [
        ("seq p50 µs", "p50_us", 1),
        ("seq p99 µs", "p99_us", 1),
        ("msg/s @64", "per_s", 0),
        ("server CPU µs/msg seq", "server_cpu_seq_us", 1),
        ("server CPU µs/msg @64", "server_cpu_64_us", 1),
        ("client CPU µs/msg seq", "client_cpu_seq_us", 1),
        ("client CPU µs/msg @64", "client_cpu_64_us", 1),
    ]
    print("| impl | " + " | ".join(title for title, _, _ in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for impl, rows in results.items():
        cells = [_cell([row[key] for row in rows], digits) for _, key, digits in columns]
        print(f"| {impl} | " + " | ".join(cells) + " |")
    base = results.get("trio-websocket")
    if base:
        print("\nratios to trio-websocket within each round, median [range]:")
        for impl, rows in results.items():
            if impl == "trio-websocket":
                continue
            p50 = [row["p50_us"] / b["p50_us"] for row, b in zip(rows, base, strict=True)]
            rate = [row["per_s"] / b["per_s"] for row, b in zip(rows, base, strict=True)]
            cpu = [row["server_cpu_64_us"] / b["server_cpu_64_us"] for row, b in zip(rows, base, strict=True)]
            print(f"  {impl:18} p50 {_cell(p50, 2)}x   msg/s @64 {_cell(rate, 2)}x   server CPU @64 {_cell(cpu, 2)}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 rounds, n = 1,000 / 6,000")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--serve", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=3000, help=argparse.SUPPRESS)
    parser.add_argument("--total", type=int, default=20000, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(serve, args.serve)
        return
    if args.client:
        result = trio.run(client, args.client, args.port, args.n, args.total)
        print(json.dumps(result))
        return
    quick = args.quick or os.environ.get("SPEAR_BENCH_QUICK") == "1"
    rounds = args.rounds or (3 if quick else 5)
    n, total = (1000, 6000) if quick else (3000, 20000)
    _run(rounds, n, total)


if __name__ == "__main__":
    main()

"""Warm and cold invoke latency of process agents, next to the floors measured in the same run.

    .venv/bin/python benchmarks/invoke.py [--quick]

Measures:
  * warm sync invoke to a process agent over websocket and over TCP: p50/p99 of
    sequential calls, and throughput with 64 calls in flight over 8 connections;
  * in-process ``node.invoke``;
  * cold start: spawn → READY of one agent process;
and the floors: a raw trio-websocket echo, a raw trio unix-socket echo (same
8-byte framing + msgpack, no correlation layer), a bare python+msgpack dial-back,
and Ray's local actor call when ``ray`` is importable. Last, the execution store
(issue 14): websocket invoke at 64 in flight with the memory and the SQLite store,
rounds alternated, and their ratio. Two reference lines show
where the floor stands against the design: the cheapest round trip to a real agent
process (a bare python+msgpack echo child, no threads, no protocol), and the
runtime's ``execute`` straight to the agent (the protocol on the agent link and the
agent SDK, but no actors, no gateway).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import trio
import trio_websocket

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _raw_framing import FrameReader, frame  # noqa: E402
from _timing import p50_p99, throughput, timed_calls  # noqa: E402
from _ws_pipelined import PipelinedWs  # noqa: E402

from spear_actors import connect, open_node  # noqa: E402
from spear_actors.config import NodeConfig  # noqa: E402
from spear_actors.model import ArtifactSpec  # noqa: E402
from spear_actors.runtimes.base import Call, InstanceSpec  # noqa: E402
from spear_actors.runtimes.process import ProcessRuntime  # noqa: E402

AGENT = ROOT / "examples" / "hello_agent.py"
PAYLOAD = {"a": 1, "b": "x" * 32}


async def sequential(call: Callable[[], Awaitable[Any]], n: int) -> tuple[float, float]:
    return p50_p99(await timed_calls(call, n))


def row(
    name: str, p50: float | None = None, p99: float | None = None, rate: float | None = None, note: str = ""
) -> None:
    cells = [f"{name:<46}"]
    cells.append(f"p50 {p50 * 1e6:8.1f} µs" if p50 is not None else " " * 15)
    cells.append(f"p99 {p99 * 1e6:8.1f} µs" if p99 is not None else " " * 15)
    cells.append(f"{rate:9.0f}/s" if rate is not None else " " * 11)
    print("  ".join(cells), note, flush=True)


# -- floors ----------------------------------------------------------------------
async def raw_ws_echo(n: int, total: int) -> tuple[tuple[float, float], float]:
    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                message = await ws.get_message()
                await ws.send_message(msgpack.packb(msgpack.unpackb(message)))
        except trio_websocket.ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        server = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
        url = f"ws://127.0.0.1:{server.port}/"
        async with trio_websocket.open_websocket_url(url) as ws:
            body = msgpack.packb(PAYLOAD)

            async def call() -> None:
                await ws.send_message(body)
                msgpack.unpackb(await ws.get_message())

            seq = await sequential(call, n)
        # 64 in flight over 8 connections: each connection carries 8 lock-stepped callers.
        conns = []
        async with trio.open_nursery() as inner:
            for _ in range(8):
                conns.append(await inner.start(_ws_pipelined_client, url))
            rate = await throughput([c.call for c in conns], 64, total)
            inner.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
    return seq, rate


async def _ws_pipelined_client(url: str, task_status: trio.TaskStatus[PipelinedWs]) -> None:
    async with trio_websocket.open_websocket_url(url) as ws, trio.open_nursery() as nursery:
        client = PipelinedWs(ws, msgpack.packb(PAYLOAD))
        nursery.start_soon(client.read)
        task_status.started(client)
        await trio.sleep_forever()


async def raw_unix_echo(n: int) -> tuple[float, float]:
    path = tempfile.mktemp(suffix=".sock")

    async def handler(stream: trio.SocketStream) -> None:
        reader = FrameReader(stream)
        try:
            while True:
                await stream.send_all(frame(msgpack.packb(msgpack.unpackb(await reader.body()))))
        except (EOFError, trio.BrokenResourceError):
            pass

    sock = trio.socket.socket(trio.socket.AF_UNIX)
    await sock.bind(path)
    sock.listen()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handler, [trio.SocketListener(sock)])
        stream = await trio.open_unix_socket(path)
        reader = FrameReader(stream)
        body = msgpack.packb(PAYLOAD)

        async def call() -> None:
            await stream.send_all(frame(body))
            msgpack.unpackb(await reader.body())

        result = await sequential(call, n)
        await stream.aclose()
        nursery.cancel_scope.cancel()
    os.unlink(path)
    return result


ECHO_CHILD = """
import os, socket, msgpack
s = socket.socket(socket.AF_UNIX); s.connect(os.environ["ADDR"])
buffer = b""
while True:
    while len(buffer) < 8 or len(buffer) < 8 + int.from_bytes(buffer[:8], "little"):
        data = s.recv(65536)
        if not data:
            raise SystemExit
        buffer += data
    length = int.from_bytes(buffer[:8], "little")
    body = msgpack.packb(msgpack.unpackb(buffer[8:8 + length]))
    buffer = buffer[8 + length:]
    s.sendall(len(body).to_bytes(8, "little") + body)
"""


async def bare_process_echo(n: int) -> tuple[float, float]:
    """The cheapest round trip to another python process: blocking socket, no threads."""
    path = tempfile.mktemp(suffix=".sock")
    sock = trio.socket.socket(trio.socket.AF_UNIX)
    await sock.bind(path)
    sock.listen()
    process = await trio.lowlevel.open_process([sys.executable, "-c", ECHO_CHILD], env={**os.environ, "ADDR": path})
    conn, _ = await sock.accept()
    stream = trio.SocketStream(conn)
    buffer = bytearray()
    body = msgpack.packb(PAYLOAD)

    async def call() -> None:
        await stream.send_all(len(body).to_bytes(8, "little") + body)
        while len(buffer) < 8 or len(buffer) < 8 + int.from_bytes(buffer[:8], "little"):
            buffer.extend(await stream.receive_some(65536))
        del buffer[: 8 + int.from_bytes(buffer[:8], "little")]

    result = await sequential(call, n)
    await stream.aclose()
    await process.wait()
    sock.close()
    os.unlink(path)
    return result


DIAL_BACK = """
import os, socket, msgpack
s = socket.socket(socket.AF_UNIX); s.connect(os.environ["ADDR"])
body = msgpack.packb({"type": "hello"}); s.sendall(len(body).to_bytes(8, "little") + body); s.recv(1)
"""


async def bare_dial_back(runs: int) -> tuple[float, float]:
    path = tempfile.mktemp(suffix=".sock")
    sock = trio.socket.socket(trio.socket.AF_UNIX)
    await sock.bind(path)
    sock.listen()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        process = await trio.lowlevel.open_process([sys.executable, "-c", DIAL_BACK], env={**os.environ, "ADDR": path})
        conn, _ = await sock.accept()
        await conn.recv(65536)
        samples.append(time.perf_counter() - start)
        await conn.send(b"x")
        conn.close()
        await process.wait()
    sock.close()
    os.unlink(path)
    return p50_p99(samples)


def ray_actor_call(n: int) -> tuple[float, float] | None:
    try:
        import ray  # type: ignore[import-not-found]
    except ImportError:
        return None
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

    @ray.remote
    class Echo:
        def echo(self, x: Any) -> Any:
            return x

    actor = Echo.remote()
    ray.get(actor.echo.remote(PAYLOAD))
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        ray.get(actor.echo.remote(PAYLOAD))
        samples.append(time.perf_counter() - start)
    ray.shutdown()
    return p50_p99(samples)


# -- spear_actors ---------------------------------------------------------------------
async def runtime_execute(n: int) -> tuple[float, float]:
    """``execute`` on a warm process instance: the agent link and the agent, no actors."""
    runtime = ProcessRuntime(f"unix://{tempfile.mkdtemp()}/agents.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        spec = InstanceSpec("direct", "t", "t", ArtifactSpec(location=str(AGENT)), AGENT)
        async with runtime.open_instance(spec) as instance:
            result = await sequential(lambda: instance.execute(Call("x", "echo", PAYLOAD), None, lambda line: None), n)
        nursery.cancel_scope.cancel()
    return result


async def cold_start(runs: int) -> tuple[float, float]:
    runtime = ProcessRuntime(f"unix://{tempfile.mkdtemp()}/agents.sock")
    samples = []
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        for i in range(runs):
            spec = InstanceSpec(f"cold-{i}", "t", "t", ArtifactSpec(location=str(AGENT)), AGENT)
            start = time.perf_counter()
            async with runtime.open_instance(spec):
                samples.append(time.perf_counter() - start)
        nursery.cancel_scope.cancel()
    return p50_p99(samples)


async def main(quick: bool) -> None:
    n = 1000 if quick else 5000
    total = 6400 if quick else 32000
    print(f"python {sys.version.split()[0]}, trio {trio.__version__}, {os.cpu_count()} cpus; n={n}\n")
    print("floors:")
    (ws_p50, ws_p99), ws_rate = await raw_ws_echo(n, total)
    row("raw trio-websocket echo", ws_p50, ws_p99, ws_rate, "(64 in flight / 8 conns)")
    unix_p50, unix_p99 = await raw_unix_echo(n)
    row("raw trio unix-socket echo (framed msgpack)", unix_p50, unix_p99)
    floor = ws_p50 + unix_p50
    row("floor for ws invoke = ws echo + unix echo", floor)
    dial_p50, dial_p99 = await bare_dial_back(10 if quick else 30)
    row("bare python+msgpack dial-back", dial_p50, dial_p99)
    ray = ray_actor_call(n)
    if ray:
        row("ray local actor call", *ray)
    else:
        print("  (ray not importable: skipped)")
    echo_p50, echo_p99 = await bare_process_echo(n)
    row(
        "ref: bare python process echo (unix)",
        echo_p50,
        echo_p99,
        note=f"+ ws echo = {(ws_p50 + echo_p50) * 1e6:.0f} µs, against the 1.3x target of {1.3 * floor * 1e6:.0f} µs",
    )

    print("\nspear_actors:")
    row("ref: runtime execute, straight to the agent", *await runtime_execute(n))
    cold_p50, cold_p99 = await cold_start(10 if quick else 30)
    row(
        "cold start: spawn → READY (python agent)",
        cold_p50,
        cold_p99,
        note=f"target ≤ 25 ms; {cold_p50 / dial_p50:.2f}x bare dial-back",
    )
    config = NodeConfig(listen=["ws://127.0.0.1:0", "tcp://127.0.0.1:0"], data_dir=Path(tempfile.mkdtemp()))
    spec = {"location": str(AGENT)}
    policy = {"max_instances": 4, "max_concurrency": 16}
    async with open_node(config) as node:
        await node.invoke("echo", PAYLOAD, task_name="bench", artifact_spec=spec, policy=policy)
        p50, p99 = await sequential(lambda: node.invoke("echo", PAYLOAD, task_name="bench"), n)
        row("in-process node.invoke (warm)", p50, p99)
        rate = await throughput([lambda: node.invoke("echo", PAYLOAD, task_name="bench")], 64, total)
        row(
            "in-process node.invoke, 64 in flight",
            rate=rate,
            note=f"{rate / ws_rate:.2f}x raw ws echo, before any websocket work",
        )
        for endpoint, label in ((node.endpoints[0], "websocket"), (node.endpoints[1], "tcp")):
            async with connect(str(endpoint)) as client:
                p50, p99 = await sequential(lambda c=client: c.invoke("echo", PAYLOAD, task_name="bench"), n)
                note = f"{p50 / floor:.2f}x floor (target ≤ 1.3x)" if label == "websocket" else ""
                row(f"{label} invoke (warm, sequential)", p50, p99, note=note)
            async with trio.open_nursery() as nursery:
                clients = []
                for _ in range(8):
                    clients.append(await nursery.start(_client, str(endpoint)))
                calls = [lambda c=c: c.invoke("echo", PAYLOAD, task_name="bench") for c in clients]
                rate = await throughput(calls, 64, total)
                note = f"{rate / ws_rate:.2f}x raw ws echo (target ≥ 0.5x)" if label == "websocket" else ""
                row(f"{label} invoke, 64 in flight / 8 conns", rate=rate, note=note)
                nursery.cancel_scope.cancel()
    await store_comparison(total // 2, 2 if quick else 3)


# -- execution store: SQLite next to memory (issue 14) ------------------------------------------
async def store_comparison(total: int, rounds: int = 3) -> None:
    """Websocket invoke at 64 in flight / 8 conns on a node with each store, rounds
    alternated in one run; prints the medians and the SQLite / memory ratio."""
    print(f"\nexecution store (websocket invoke, 64 in flight / 8 conns; median of {rounds} rounds):")
    rates: dict[str, list[float]] = {"memory": [], "sqlite": []}
    for _ in range(rounds):
        for store in ("memory", "sqlite"):
            config = NodeConfig(listen=["ws://127.0.0.1:0"], data_dir=Path(tempfile.mkdtemp()), store=store)
            async with open_node(config) as node:
                spec = {"location": str(AGENT)}
                await node.invoke(
                    "echo",
                    PAYLOAD,
                    task_name="bench",
                    artifact_spec=spec,
                    policy={"max_instances": 4, "max_concurrency": 16},
                )
                async with trio.open_nursery() as nursery:
                    clients = [await nursery.start(_client, str(node.endpoints[0])) for _ in range(8)]
                    calls = [lambda c=c: c.invoke("echo", PAYLOAD, task_name="bench") for c in clients]
                    rates[store].append(await throughput(calls, 64, total))
                    nursery.cancel_scope.cancel()
    medians = {store: statistics.median(r) for store, r in rates.items()}
    for store, r in rates.items():
        row(f"{store} store", rate=medians[store], note=f"range {min(r):.0f}-{max(r):.0f}")
    ratio = medians["sqlite"] / medians["memory"]
    row("sqlite / memory", note=f"{ratio:.2f}x (target ≥ 0.9x: {'met' if ratio >= 0.9 else 'MISSED'})")


async def metrics_overhead(total: int, rounds: int = 7) -> None:
    """Websocket invoke at 64 in flight with metrics off and on (``metrics_listen``
    set, scraped once a second), alternating rounds in the same run: throughput, and
    the CPU time per call of this process (client and node both run here; CPU time
    is much less disturbed than wall time by other load on the machine)."""
    spec = {"location": str(AGENT)}
    policy = {"max_instances": 4, "max_concurrency": 16}
    rates: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(rounds):
        for metrics in (False, True):
            config = NodeConfig(
                listen=["ws://127.0.0.1:0"],
                data_dir=Path(tempfile.mkdtemp()),
                metrics_listen="http://127.0.0.1:0" if metrics else None,
            )
            async with open_node(config) as node, trio.open_nursery() as nursery:
                await node.invoke("echo", PAYLOAD, task_name="bench", artifact_spec=spec, policy=policy)
                if node.metrics_url is not None:
                    nursery.start_soon(_scrape_every_second, node.metrics_url)
                clients = [await nursery.start(_client, str(node.endpoints[0])) for _ in range(8)]
                calls = [lambda c=c: c.invoke("echo", PAYLOAD, task_name="bench") for c in clients]
                before = time.process_time()
                rates[metrics].append(await throughput(calls, 64, total))
                cpu[metrics].append((time.process_time() - before) / total)
                nursery.cancel_scope.cancel()

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    for metrics in (False, True):
        spread = "/".join(f"{r:.0f}" for r in rates[metrics])
        row(
            f"websocket invoke, 64 in flight, metrics {'on' if metrics else 'off'}",
            rate=median(rates[metrics]),
            note=f"CPU {median(cpu[metrics]) * 1e6:.1f} µs/call here; rounds {spread}",
        )
    off, on = median(cpu[False]), median(cpu[True])
    print(
        f"  metrics cost: {100 * (on - off) / off:+.1f} % CPU per call, "
        f"{100 * (median(rates[False]) - median(rates[True])) / median(rates[False]):+.1f} % throughput "
        f"(median of {rounds} alternating rounds; target ≤ 3 %)",
        flush=True,
    )


# -- TLS: wss next to ws (issue 13) -----------------------------------------------------
async def tls_comparison(n: int, rounds: int = 3) -> None:
    """Sequential invoke p50 over ws and wss (a trustme certificate) on one node,
    rounds alternated in one run; prints the medians and the wss / ws ratio."""
    import ssl

    import trustme

    from spear_actors.config import TlsConfig

    print(f"\nTLS (warm sequential invoke, median of {rounds} alternating rounds of {n}):")
    directory = Path(tempfile.mkdtemp())
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(directory / "cert.pem"))
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    config = NodeConfig(
        listen=["ws://127.0.0.1:0", "wss://127.0.0.1:0"],
        data_dir=directory / "data",
        tls=TlsConfig(cert=directory / "cert.pem", key=directory / "cert.pem"),
    )
    p50s: dict[str, list[float]] = {"ws": [], "wss": []}
    p99s: dict[str, list[float]] = {"ws": [], "wss": []}
    async with open_node(config) as node:
        await node.invoke("echo", PAYLOAD, task_name="bench", artifact_spec={"location": str(AGENT)})
        async with connect(str(node.endpoints[0])) as ws, connect(str(node.endpoints[1]), ssl_context=trusting) as wss:
            for _ in range(rounds):
                for label, client in (("ws", ws), ("wss", wss)):
                    p50, p99 = await sequential(lambda c=client: c.invoke("echo", PAYLOAD, task_name="bench"), n)
                    p50s[label].append(p50)
                    p99s[label].append(p99)
    for label in ("ws", "wss"):
        spread = "/".join(f"{p * 1e6:.0f}" for p in p50s[label])
        row(
            f"{label} invoke (warm, sequential)",
            statistics.median(p50s[label]),
            statistics.median(p99s[label]),
            note=f"p50 rounds {spread} µs",
        )
    ratio = statistics.median(p50s["wss"]) / statistics.median(p50s["ws"])
    row("wss / ws p50", note=f"{ratio:.2f}x (target ≤ 1.3x: {'met' if ratio <= 1.3 else 'MISSED'})")


async def _scrape_every_second(url: str) -> None:
    import httpx

    async with httpx.AsyncClient() as http:
        while True:
            await http.get(url)
            await trio.sleep(1.0)


async def _client(url: str, task_status: trio.TaskStatus[Any]) -> None:
    async with connect(url) as client:
        task_status.started(client)
        await trio.sleep_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer samples (about 20 s)")
    parser.add_argument("--metrics-only", action="store_true", help="only metrics off vs on")
    parser.add_argument("--tls-only", action="store_true", help="only wss next to ws")
    arguments = parser.parse_args()
    quick = arguments.quick or bool(os.environ.get("BENCH_QUICK"))
    if arguments.tls_only:
        trio.run(tls_comparison, 1000 if quick else 3000, 3 if quick else 5)
        raise SystemExit(0)
    trio.run(tls_comparison, 1000 if quick else 3000, 3 if quick else 5)
    if not arguments.metrics_only:
        trio.run(main, quick)
    print("\nmetrics:")
    trio.run(metrics_overhead, 2_000 if quick else 4_000, 7 if quick else 15)

"""ASYNC submit throughput, STREAM throughput and execution-record memory (issue 4).

    .venv/bin/python benchmarks/modes.py [--quick]      # about 55 s (quick: about 20 s)

Measures, in one run:

* **ASYNC submit throughput**: how many ``execution_mode="ASYNC"`` invocations per
  second the node accepts (answered with an execution id), one submitter at a time
  and with 64 submitters, in process (``node.invoke``) and over websocket
  (``client.invoke``; 64 in flight over 8 connections). Each is measured twice:
  *accept only*, against a task whose single slot is held busy so every call stays
  PENDING (the task is then force-deleted), and *while running*, against a task free
  to run them on up to 4 instances x 16 slots, where submits share the node's loop
  with the executions they start; for the latter, also the rate until every accepted
  execution has COMPLETED. The accept rate is also shown for two queue depths.
* **STREAM throughput**: a process agent's generator yielding fixed-size ``bytes``
  chunks to ``client.stream`` over websocket (window 16), in chunks/s and MB/s,
  next to the floor measured in the same run: a raw protocol stream
  (``Connection.stream`` between two in-process trio endpoints on websocket, whose
  handler ``send_item()``s the same chunks). ``node.stream`` in process (agent →
  node, no client hop) is shown between them.
* **Execution store** (issue 14): ASYNC over websocket at 64 in flight on a fresh node
  with the memory store and one with the SQLite store, rounds alternated in one run:
  medians, the ratio (target ≥ 0.9x) and the node's CPU per call; then the SQLite store
  alone: records/s sustained and disk per 100k records.
* **Memory per retained ExecutionRecord** without the result payload: tracemalloc
  over N records created, started and finished (small result) in an
  ``ExecutionRegistry``, divided by N. Target ≤ 2 KB.

The node runs in this process and its agents in child processes; the machine is
shared, so figures move by ±30 % between runs.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spear_actors import connect, open_node  # noqa: E402
from spear_actors.actors.executions import ExecutionRegistry  # noqa: E402
from spear_actors.actors.messages import Outcome  # noqa: E402
from spear_actors.config import NodeConfig  # noqa: E402
from spear_actors.model import ExecutionMode, InstancePolicy  # noqa: E402
from spear_actors.node import Node  # noqa: E402
from spear_actors.policy import OperatorPolicy  # noqa: E402
from spear_actors.protocol.calls import IncomingRequest  # noqa: E402
from spear_actors.protocol.handshake import accept_connection, open_connection  # noqa: E402
from spear_actors.protocol.messages import Hello  # noqa: E402
from spear_actors.protocol.transports import Transport, open_transport, serve_endpoint  # noqa: E402

RECORD_TARGET_BYTES = 2048
WINDOW = 16
AGENT_SPEC: dict[str, Any] = {}  # set in main(): the agent written to a temp dir
STORE_STATS: dict[str, Any] = {}
HELD_POLICY = {"min_instances": 0, "max_instances": 1, "max_concurrency": 1, "max_pending": 1_000_000}

AGENT_SOURCE = """
import time

from spear_actors.agent import Agent

agent = Agent("modes-bench")


@agent.function
def add(a, b):
    return a + b


@agent.function
def hold(seconds):
    time.sleep(seconds)


@agent.function
def chunks(n, size):
    chunk = b"x" * size
    for _ in range(n):
        yield chunk
    return n


if __name__ == "__main__":
    agent.run()
"""


def row(name: str, value: str, note: str = "") -> None:
    print(f"  {name:<70} {value:>28}  {note}", flush=True)


# -- ASYNC -------------------------------------------------------------------------------
async def until_idle(node: Node) -> None:
    """Wait until no execution is pending or running (polls the health summary)."""
    while True:
        health = await node.get_health()
        if health["pending_executions"] == 0 and health["running_executions"] == 0:
            return
        await trio.sleep(0.002)


async def submit_all(submit: Callable[[int], Awaitable[dict[str, Any]]], n: int, submitters: int) -> float:
    """Run *n* submits with *submitters* concurrent tasks; return the elapsed seconds."""
    per = n // submitters

    async def worker(offset: int) -> None:
        for i in range(offset, offset + per):
            accepted = await submit(i)
            assert accepted["status"] in ("PENDING", "RUNNING", "COMPLETED"), accepted

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for w in range(submitters):
            nursery.start_soon(worker, w * per)
    return time.perf_counter() - start


async def sustained(
    label: str, node: Node, submits: list[Callable[[int], Awaitable[dict[str, Any]]]], n: int, submitters: int
) -> None:
    """Submit to a task free to run them: submits compete with the executions they start."""
    before = (await node.get_stats())["node"]["counts"].get("COMPLETED", 0)
    start = time.perf_counter()
    elapsed = await submit_all(lambda i: submits[i % len(submits)](i), n, submitters)
    await until_idle(node)
    total = time.perf_counter() - start
    completed = (await node.get_stats())["node"]["counts"].get("COMPLETED", 0) - before
    done = n // submitters * submitters
    assert completed == done, f"{completed} of {done} completed"
    row(f"{label}: submit while running", f"{done / elapsed:9.0f} submits/s", f"{elapsed:.2f} s")
    row(f"{label}: submit → all COMPLETED", f"{done / total:9.0f} executions/s", f"{total:.2f} s")


async def accept_only(
    label: str, node: Node, submits: list[Callable[[int], Awaitable[dict[str, Any]]]], n: int, submitters: int
) -> None:
    """Submit to a task whose only slot is held busy: every call is accepted and stays
    PENDING, so this is the node's accept rate alone. The task is then force-deleted."""
    first = await node.invoke(
        "hold", [600], task_name="held", artifact_spec=AGENT_SPEC, policy=HELD_POLICY, execution_mode="ASYNC"
    )
    while True:
        if (await node.get_execution(first["execution_id"]))["status"] == "RUNNING":
            break
        await trio.sleep(0.005)
    elapsed = await submit_all(lambda i: submits[i % len(submits)](i), n, submitters)
    done = n // submitters * submitters
    row(f"{label}: accept only (queued)", f"{done / elapsed:9.0f} submits/s", f"{elapsed:.2f} s")
    await node.delete_task(first["task_id"], force=True)
    await until_idle(node)


async def bench_async(node: Node, n: int, quick: bool) -> None:
    print("\nASYNC submit (function `add` on a process agent; up to 4 instances x 16 slots):")

    def inproc(task: str) -> Callable[[int], Awaitable[dict[str, Any]]]:
        async def submit(i: int) -> dict[str, Any]:
            return await node.invoke("add", [i, 1], task_name=task, execution_mode="ASYNC")

        return submit

    for depth in (2_000, 8_000 if quick else 16_000):
        # A TaskActor scans its whole queue on every message (_scale_up): accept
        # rate falls as the queue grows.
        await accept_only(f"in-process node.invoke, 1 submitter, queue of {depth}", node, [inproc("held")], depth, 1)
    for submitters in (1, 64):
        label = f"in-process node.invoke, {submitters} submitter{'s' if submitters > 1 else ''}"
        await accept_only(label, node, [inproc("held")], n, submitters)
        await sustained(label, node, [inproc("bench")], n, submitters)
    url = str(node.endpoints[0])
    async with trio.open_nursery() as nursery:
        clients = [await nursery.start(_client, url) for _ in range(8)]

        def remote(task: str) -> list[Callable[[int], Awaitable[dict[str, Any]]]]:
            return [lambda i, c=c: c.invoke("add", [i, 1], task_name=task, execution_mode="ASYNC") for c in clients]

        label = "websocket client.invoke, 1 submitter"
        await accept_only(label, node, remote("held")[:1], n, 1)
        await sustained(label, node, remote("bench")[:1], n, 1)
        label = "websocket client.invoke, 64 in flight / 8 conns"
        await accept_only(label, node, remote("held"), n, 64)
        await sustained(label, node, remote("bench"), n, 64)
        nursery.cancel_scope.cancel()


async def _client(url: str, task_status: trio.TaskStatus[Any]) -> None:
    async with connect(url) as client:
        task_status.started(client)
        await trio.sleep_forever()


# -- STREAM ------------------------------------------------------------------------------
def stream_row(label: str, n: int, size: int, seconds: float, floor: float | None = None) -> float:
    rate = n / seconds
    note = f"{seconds:.2f} s"
    if floor is not None:
        note += f"; {rate / floor:.2f}x raw protocol stream"
    row(label, f"{rate:9.0f} chunks/s {rate * size / 1e6:7.1f} MB/s", note)
    return rate


async def raw_stream(n: int, size: int) -> float:
    """Seconds to carry *n* chunks of *size* bytes over a bare protocol stream on websocket."""
    chunk = b"x" * size

    async def handler(incoming: IncomingRequest) -> Any:
        for _ in range(incoming.params["n"]):
            await incoming.send_item(chunk)
        return incoming.params["n"]

    async def on_transport(transport: Transport) -> None:
        async with accept_connection(transport, handler=handler) as connection:
            await connection.wait_closed()

    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(serve_endpoint, "ws://127.0.0.1:0", on_transport)
        async with open_transport(endpoint) as transport, open_connection(transport, Hello(role="bench")) as conn:
            async with conn.stream("chunks", {"n": 100}, window=WINDOW) as items:  # warm-up
                async for _ in items:
                    pass
            start = time.perf_counter()
            received = 0
            async with conn.stream("chunks", {"n": n}, window=WINDOW) as items:
                async for item in items:
                    received += len(item)
            seconds = time.perf_counter() - start
        assert received == n * size and items.result == n
        nursery.cancel_scope.cancel()
    return seconds


async def node_stream(node: Node, n: int, size: int, client: Any | None) -> float:
    """Seconds for the agent's generator to deliver *n* chunks through the node."""
    if client is None:
        stream = node.stream("chunks", [n, size], task_name="bench", window=WINDOW)
    else:
        stream = client.stream("chunks", [n, size], task_name="bench", window=WINDOW)
    start = time.perf_counter()
    received = 0
    async with stream as items:
        async for item in items:
            received += len(item)
    seconds = time.perf_counter() - start
    assert received == n * size
    return seconds


async def bench_stream(node: Node, quick: bool) -> None:
    print(f"\nSTREAM (bytes chunks from a process agent's generator; window {WINDOW}):")
    cases = [(256, 5_000 if quick else 20_000), (65_536, 400 if quick else 1_500)]
    async with connect(str(node.endpoints[0])) as client:
        await node_stream(node, 100, 256, client)  # warm-up
        for size, n in cases:
            floor = stream_row(f"raw protocol stream, ws, {size} B chunks", n, size, await raw_stream(n, size))
            stream_row(
                f"in-process node.stream, {size} B chunks", n, size, await node_stream(node, n, size, None), floor
            )
            stream_row(
                f"websocket client.stream, {size} B chunks", n, size, await node_stream(node, n, size, client), floor
            )


# -- the execution store ------------------------------------------------------------------------
def _store_config(workdir: Path, store: str) -> NodeConfig:
    config = NodeConfig(
        listen=["ws://127.0.0.1:0"],
        data_dir=workdir / f"data-{store}-{uuid.uuid4().hex[:6]}",
        store=store,
        policy=OperatorPolicy(artifact_roots=[workdir]),  # the agent is written there
    )
    config.defaults = InstancePolicy(
        min_instances=0, max_instances=4, max_concurrency=16, idle_timeout_s=300.0, max_pending=1_000_000
    )
    return config


async def _store_round(workdir: Path, store: str, n: int) -> tuple[float, float, float]:
    """ASYNC submits/s at 64 in flight (8 websocket connections) while running,
    executions/s until all COMPLETED, and the node process's CPU µs per call (all
    threads: the loop and the store's writer), on a fresh node with *store*."""
    async with open_node(_store_config(workdir, store)) as node:
        await node.invoke("add", [1, 2], task_name="bench", artifact_spec=AGENT_SPEC)
        async with trio.open_nursery() as nursery:
            clients = [await nursery.start(_client, str(node.endpoints[0])) for _ in range(8)]
            submits = [
                lambda i, c=c: c.invoke("add", [i, 1], task_name="bench", execution_mode="ASYNC") for c in clients
            ]
            start = time.perf_counter()
            cpu = time.process_time()
            elapsed = await submit_all(lambda i: submits[i % len(submits)](i), n, 64)
            await until_idle(node)
            total = time.perf_counter() - start
            cpu = time.process_time() - cpu
            nursery.cancel_scope.cancel()
        STORE_STATS[store] = (await node.get_stats())["node"]["store"]
    done = n // 64 * 64
    return done / elapsed, done / total, cpu / done * 1e6


async def bench_store(workdir: Path, quick: bool) -> None:
    """The SQLite store next to the memory store, same run, rounds alternated."""
    n = 4_000 if quick else 10_000
    rounds = 2 if quick else 3
    print(f"\nExecution store: ASYNC over websocket, 64 in flight / 8 conns, {n} calls; median of {rounds} rounds:")
    results: dict[str, list[tuple[float, float, float]]] = {"memory": [], "sqlite": []}
    for _ in range(rounds):
        for store in ("memory", "sqlite"):
            results[store].append(await _store_round(workdir, store, n))
    medians = {}
    for store, runs in results.items():
        submit = sorted(r[0] for r in runs)
        complete = sorted(r[1] for r in runs)
        cpu = statistics.median(r[2] for r in runs)
        medians[store] = (statistics.median(submit), statistics.median(complete), cpu)
        spread = f"range {submit[0]:.0f}-{submit[-1]:.0f}"
        row(f"{store} store: submit while running", f"{medians[store][0]:9.0f} submits/s", spread)
        row(f"{store} store: submit → all COMPLETED", f"{medians[store][1]:9.0f} executions/s")
        row(f"{store} store: node CPU per call (loop + writer)", f"{cpu:9.0f} µs")
    ratio = medians["sqlite"][0] / medians["memory"][0]
    verdict = "met" if ratio >= 0.9 else "MISSED"
    row("sqlite / memory (submits/s)", f"{ratio:9.2f}x", f"target ≥ 0.9x: {verdict}")
    row("sqlite / memory (all COMPLETED)", f"{medians['sqlite'][1] / medians['memory'][1]:9.2f}x")
    row(
        "memory / sqlite (CPU per call)",
        f"{medians['memory'][2] / medians['sqlite'][2]:9.2f}x",
        "the throughput ratio a saturated core allows; steadier than the rates on a shared machine",
    )
    await bench_store_raw(workdir, quick)


async def bench_store_raw(workdir: Path, quick: bool) -> None:
    """Records/s the SQLite store sustains on its own, and its disk use per 100k records."""
    from spear_actors.store import ExecutionRow, Retention, SqliteStore, pack

    n = 100_000
    store = SqliteStore(workdir / f"raw-{uuid.uuid4().hex[:6]}", Retention())
    await store.open("bench", 0)
    try:
        result = pack(12345)
        now = time.time()
        start = time.perf_counter()
        seq = 0
        for i in range(n):
            execution_id = f"exec-{uuid.uuid4().hex}"
            row_ = ExecutionRow(execution_id, "task-0123456789ab", "add", "ASYNC", "PENDING", "", now, None, None, None)
            store.save(row_)
            row_ = ExecutionRow(
                execution_id,
                "task-0123456789ab",
                "add",
                "ASYNC",
                "COMPLETED",
                "task-0123456789ab-1-abcdef",
                now,
                now,
                now,
                0.123,
                None,
                result,
            )
            seq = store.save(row_)
            if i % 1000 == 999:
                await trio.lowlevel.checkpoint()  # let commits be acknowledged, as the loop would
                while store.file.backlog > 20_000:
                    await trio.sleep(0.001)
        await store.committed(seq)
        elapsed = time.perf_counter() - start
    finally:
        await store.aclose()
    directory = store.file.directory
    size = sum(f.stat().st_size for f in directory.iterdir() if f.name.startswith("spear.sqlite3"))
    row(f"SqliteStore alone: {n} records (created + finished, small result)", f"{n / elapsed:9.0f} records/s")
    row("disk per 100k finished records (db + wal)", f"{size / (n / 100_000) / 2**20:9.1f} MiB")


# -- memory ----------------------------------------------------------------------------------
def record_memory(n: int) -> tuple[float, float]:
    """Bytes per finished record retained by an ExecutionRegistry (small results), and
    the same after 2n records went through a registry that keeps only n."""
    task_id = f"task-{uuid.uuid4().hex[:12]}"  # shared by the records of a task, as in the manager
    instance_id = f"{task_id}-1-{uuid.uuid4().hex[:6]}"
    name = msgpack.packb("add")

    def fill(registry: ExecutionRegistry, count: int) -> None:
        for i in range(count):
            # Like the manager: a fresh execution id, a function name decoded per request.
            record = registry.create(f"exec-{uuid.uuid4().hex}", task_id, msgpack.unpackb(name), ExecutionMode.ASYNC)
            registry.started(record, instance_id)
            registry.finish(record, Outcome(i, instance_id, 0.123, []), None)

    results = []
    for count, keep in ((n, n), (2 * n, n)):
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        registry = ExecutionRegistry(max_records=keep, max_age_s=1e9)
        fill(registry, count)
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        assert len(registry) == keep
        results.append(used / keep)
        del registry
    return results[0], results[1]


def bench_memory(quick: bool) -> None:
    n = 10_000 if quick else 50_000
    print("\nExecutionRecord memory (tracemalloc; small int results, no logs):")
    per, bounded = record_memory(n)
    verdict = "met" if per <= RECORD_TARGET_BYTES else "MISSED"
    row(f"{n} finished records retained", f"{per:9.0f} B/record", f"target ≤ {RECORD_TARGET_BYTES} B: {verdict}")
    row(
        f"{2 * n} records through a registry keeping {n}",
        f"{bounded:9.0f} B/retained record",
        "(eviction keeps memory bounded)",
    )


# -- main ----------------------------------------------------------------------------------------
async def main(quick: bool) -> None:
    print(
        f"python {sys.version.split()[0]}, trio {trio.__version__}, {os.cpu_count()} cpus{' (quick)' if quick else ''}"
    )
    bench_memory(quick)
    workdir = Path(tempfile.mkdtemp(prefix="spear-modes-"))
    agent = workdir / "modes_agent.py"
    agent.write_text(AGENT_SOURCE)
    AGENT_SPEC["location"] = str(agent)
    await bench_store(workdir, quick)
    config = NodeConfig(
        listen=["ws://127.0.0.1:0"],
        data_dir=workdir / "data",
        max_execution_records=200_000,
        policy=OperatorPolicy(artifact_roots=[workdir]),  # the agent is written there
    )
    config.defaults = InstancePolicy(
        min_instances=0, max_instances=4, max_concurrency=16, idle_timeout_s=300.0, max_pending=1_000_000
    )
    async with open_node(config) as node:
        await node.invoke("add", [1, 2], task_name="bench", artifact_spec=AGENT_SPEC)
        await bench_async(node, 4_000 if quick else 10_000, quick)
        await bench_stream(node, quick)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (about 20 s)")
    trio.run(main, parser.parse_args().quick or bool(os.environ.get("BENCH_QUICK")))

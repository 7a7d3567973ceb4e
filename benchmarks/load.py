"""Pools under load: latency against offered load, recovery after SIGKILL, memory.

    .venv/bin/python benchmarks/load.py [--quick]

* capacity: closed loop, 64 callers, of a task with 2 instances x 4 slots whose
  function sleeps 10 ms (so the ideal is 800 calls/s);
* a curve: open-loop Poisson arrivals at 10 % … 120 % of the measured capacity:
  throughput, p50/p99 latency, calls refused (RESOURCE_EXHAUSTED) and how fast
  a refusal is answered;
* recovery: SIGKILL of the agent of a task with min_instances = 1 → the
  replacement is READY;
* memory per idle task and per instance, in the node (tracemalloc).

Targets (issue 6): p99 at 70 % of capacity ≤ 5x p50; recovery ≤ 100 ms; overload
answered in ≤ 1 ms.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _timing import quantile  # noqa: E402

from spear_actors import ErrorCode, SpearError, open_node  # noqa: E402
from spear_actors.actors.manager import TaskSeed  # noqa: E402
from spear_actors.config import NodeConfig  # noqa: E402
from spear_actors.model import ArtifactSpec, InstancePolicy  # noqa: E402
from spear_actors.node import Node  # noqa: E402

AGENT = ROOT / "tests" / "agents" / "busy_agent.py"
SPEC = {"location": str(AGENT)}
POLICY = {"min_instances": 2, "max_instances": 2, "max_concurrency": 4, "max_pending": 64}
SERVICE_S = 0.01


async def call(node: Node) -> None:
    await node.invoke("wait", [SERVICE_S], task_name="load")


async def capacity(node: Node, seconds: float) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await call(node)
            done += 1

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(64):
            nursery.start_soon(caller)
    return done / (time.perf_counter() - start)


async def offered(node: Node, rate: float, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    refusals: list[float] = []

    async def one() -> None:
        start = time.perf_counter()
        try:
            await call(node)
            latencies.append(time.perf_counter() - start)
        except SpearError as exc:
            if exc.code is not ErrorCode.RESOURCE_EXHAUSTED:
                raise
            refusals.append(time.perf_counter() - start)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        next_at = start
        while next_at < start + seconds:
            next_at += random.expovariate(rate)
            await trio.sleep(max(0.0, next_at - time.perf_counter()))
            nursery.start_soon(one)
    elapsed = time.perf_counter() - start
    return {
        "throughput": len(latencies) / elapsed,
        "p50": quantile(latencies, 0.5),
        "p99": quantile(latencies, 0.99),
        "refused": len(refusals),
        "refusal_p99": quantile(refusals, 0.99),
        "refusal_p50": quantile(refusals, 0.5),
        "total": len(latencies) + len(refusals),
    }


async def recovery(node: Node, runs: int) -> list[float]:
    times = []
    for i in range(runs):
        name = f"recover-{i}"
        first = await node.invoke("pid", None, task_name=name, artifact_spec=SPEC, policy={"min_instances": 1})
        task_id = first["task_id"]
        os.kill(first["result"], signal.SIGKILL)
        killed = time.perf_counter()
        while True:
            instances = (await node.get_task(task_id))["instances"]
            if any(inst["status"] == "READY" and inst["instance_id"] != first["instance_id"] for inst in instances):
                break
            await trio.sleep(0.0005)
        times.append(time.perf_counter() - killed)
        await node.delete_task(task_id, force=True)
    return times


async def memory(node: Node, tasks: int, instances: int) -> tuple[float, float]:
    spec = ArtifactSpec(location=str(AGENT))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(tasks):
        await node.declare_task(TaskSeed(f"idle-{i}", "", spec, InstancePolicy()))
    per_task = (tracemalloc.get_traced_memory()[0] - before) / tasks
    before = tracemalloc.get_traced_memory()[0]
    await node.invoke(
        "pid",
        None,
        task_name="mem",
        artifact_spec=SPEC,
        policy={"min_instances": instances, "max_instances": instances},
    )
    task_id = (await node.list_tasks(prefix="mem"))["tasks"][0]["task_id"]
    while sum(1 for i in (await node.get_task(task_id))["instances"] if i["status"] == "READY") < instances:
        await trio.sleep(0.01)
    per_instance = (tracemalloc.get_traced_memory()[0] - before) / instances
    tracemalloc.stop()
    return per_task, per_instance


async def main(quick: bool) -> None:
    logging.basicConfig(level=logging.ERROR)  # the recovery runs kill agents on purpose
    step = 1.5 if quick else 4.0
    random.seed(1)
    config = NodeConfig(data_dir=Path(tempfile.mkdtemp()), max_total_instances=1024)
    print(f"python {sys.version.split()[0]}, trio {trio.__version__}, {os.cpu_count()} cpus\n")
    async with open_node(config) as node:
        await node.invoke("pid", None, task_name="load", artifact_spec=SPEC, policy=POLICY)
        cap = await capacity(node, step)
        print(f"capacity (64 closed-loop callers): {cap:.0f} calls/s  (ideal {8 / SERVICE_S:.0f})\n")
        print(
            f"{'offered':>8} {'load':>5} {'thru/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'p99/p50':>8} "
            f"{'refused':>8} {'refusal p50 / p99':>18}"
        )
        for fraction in (0.1, 0.3, 0.5, 0.7, 0.9, 1.0, 1.2):
            r = await offered(node, cap * fraction, step)
            ratio = r["p99"] / r["p50"]
            mark = "  <- target p99 ≤ 5x p50" if fraction == 0.7 else ""
            refusal = (
                f"{r['refusal_p50'] * 1e3:6.3f} / {r['refusal_p99'] * 1e3:6.3f} ms" if r["refused"] else f"{'-':>12}"
            )
            print(
                f"{cap * fraction:8.0f} {fraction:5.0%} {r['throughput']:8.0f} {r['p50'] * 1e3:8.2f} "
                f"{r['p99'] * 1e3:8.2f} {ratio:8.2f} {r['refused']:8d} {refusal}{mark}"
            )
            await trio.sleep(0.5)
        times = await recovery(node, 5 if quick else 15)
        print(
            f"\nrecovery SIGKILL → replacement READY: p50 {quantile(times, 0.5) * 1e3:.1f} ms, "
            f"max {max(times) * 1e3:.1f} ms (target ≤ 100 ms)"
        )
        per_task, per_instance = await memory(node, 1000 if quick else 5000, 8)
        print(
            f"memory in the node: {per_task / 1024:.1f} KiB per idle task, "
            f"{per_instance / 1024:.1f} KiB per instance (process agent, node side)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="shorter steps (about 25 s)")
    trio.run(main, parser.parse_args().quick or bool(os.environ.get("BENCH_QUICK")))

"""Routing in a real cluster: three ``spear serve`` processes on one real etcd.

Figures, all in the same run (the baseline is the owner itself):

* **invoke through the owner vs through a forwarding node**: sequential p50/p99 of a
  SYNC ``add`` by task name, sent to the owner node and to another node that forwards
  it over its pooled node-to-node connection, in alternating rounds (so the machine's
  drifting load weighs on both alike), with the CPU each node spent per call; and
  throughput with 64 calls in flight (64 client tasks on one connection each way, also
  in alternating rounds).
  Target: forwarding p50 <= 1.5x the owner's.
* **task-creation race**: a fresh name asked of all three nodes at once (NEW_TASK with
  an artifact); the latency of each of the three calls (each includes starting the
  agent process on the winner), and a check that each round made one task.
* **owner death to first successful call**: a fourth node owns a task and is killed
  with SIGKILL; a client keeps calling NEW_TASK for that name through another node;
  the time from the kill to the first success (on a new owner). Target <= lease TTL
  (2 s here) + 1 s.

    python benchmarks/cluster.py            # about 60 s
    python benchmarks/cluster.py --quick    # fewer calls and rounds

The nodes run the ``spear_actors`` that ``python -m spear_actors.cli`` finds: run from
another directory with ``PYTHONPATH=<other checkout>`` to measure that code (e.g. a
baseline) with this harness.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._timing import p50_p99, timed_calls
from spear_actors import SpearError, connect
from spear_actors.cluster import id_owner
from tests.cluster.etcd_server import ETCD, EtcdServer

ROOT = Path(__file__).resolve().parent.parent
AGENT = {"location": str(ROOT / "examples" / "hello_agent.py"), "artifact_type": "process"}
SPEAR = [sys.executable, "-m", "spear_actors.cli"]
TTL = 2


def _config(node_id: str, etcd_url: str, prefix: str, work: Path) -> str:
    listen = (
        '["ws://127.0.0.1:0"]' if os.environ.get("SPEAR_BENCH_PEER_WS") else '["ws://127.0.0.1:0", "tcp://127.0.0.1:0"]'
    )

    return f"""
node_id = "{node_id}"
listen = {listen}
store = "memory"
agent_listen = "unix://{work}/agents.sock"
[defaults]
max_instances = 4
[policy]
artifact_roots = ["{ROOT}"]
[cluster]
endpoints = ["{etcd_url}"]
prefix = "{prefix}"
lease_ttl_s = {TTL}
token = "bench-cluster-secret"
request_timeout_s = 1.0
retry_interval_s = 0.1
load_publish_interval_s = 0.2
"""


class Served:
    def __init__(self, node_id: str, process: trio.Process, url: str) -> None:
        self.node_id, self.process, self.url = node_id, process, url


@asynccontextmanager
async def serve(
    node_id: str, etcd_url: str, prefix: str, root: Path, code: Path | None = None
) -> AsyncIterator[Served]:
    """A ``spear serve`` process; *code*: a checkout whose ``spear_actors`` it runs
    (its working directory, first on its path; default: whatever this interpreter
    imports)."""
    work = root / node_id
    work.mkdir()
    (work / "node.toml").write_text(_config(node_id, etcd_url, prefix, work))
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process,
                [*SPEAR, "serve", "--config", str(work / "node.toml"), "--data-dir", str(work / "data")],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                check=False,
                cwd=None if code is None else str(code),
            )
        )
        assert process.stdout is not None
        seen = bytearray()
        with trio.fail_after(30):
            while (match := re.search(rb"listening on (\S+)", seen)) is None:
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    raise RuntimeError(f"{node_id} exited")
                seen.extend(chunk)

        async def drain() -> None:
            assert process.stdout is not None
            async for _ in process.stdout:
                pass

        nursery.start_soon(drain)
        try:
            yield Served(node_id, process, match.group(1).decode())
        finally:
            if process.returncode is None:
                process.terminate()
            with trio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()


async def until_all_see(urls: list[str], node_ids: set[str]) -> None:
    with trio.fail_after(30):
        for url in urls:
            async with connect(url) as client:
                while {n["node_id"] for n in (await client.get_health(scope="cluster"))["nodes"]} < node_ids:
                    await trio.sleep(0.05)


async def throughput(url: str, total: int, in_flight: int) -> float:
    async with connect(url) as client:
        left = total

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await client.invoke("add", [1, 2], task_name="bench")

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(in_flight):
                nursery.start_soon(worker)
        return total / (time.perf_counter() - start)


def cpu_seconds(process: trio.Process) -> float:
    """CPU time (user + system) the process has used so far."""
    fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def sequential(a: Served, b: Served, calls: int, rounds: int) -> dict[str, Any]:
    """p50, p99 and CPU per call of sequential calls through the owner *a* and through
    *b*, measured in alternating rounds (the machine's load drifts: a ratio of two
    windows taken one after the other would measure the drift too); also the ratio of
    each round's p50s, under ``"ratios"``."""
    labels = {"owner (node-a)": a, "forwarded (node-b -> node-a)": b}
    samples: dict[str, list[float]] = {label: [] for label in labels}
    cpu = {(label, node.node_id): 0.0 for label in labels for node in (a, b)}
    ratios: list[float] = []
    per_round = max(1, calls // rounds)
    async with connect(a.url) as on_a, connect(b.url) as on_b:
        clients = {"owner (node-a)": on_a, "forwarded (node-b -> node-a)": on_b}
        for round_ in range(rounds):
            p50s: dict[str, float] = {}
            for label in list(labels) if round_ % 2 == 0 else list(labels)[::-1]:
                client = clients[label]
                before = {node.node_id: cpu_seconds(node.process) for node in (a, b)}
                taken = await timed_calls(
                    lambda client=client: client.invoke("add", [1, 2], task_name="bench"), per_round
                )
                for node in (a, b):
                    cpu[label, node.node_id] += cpu_seconds(node.process) - before[node.node_id]
                samples[label].extend(taken)
                p50s[label] = p50_p99(taken)[0]
            ratios.append(p50s["forwarded (node-b -> node-a)"] / p50s["owner (node-a)"])
    results: dict[str, Any] = {}
    for label, taken in samples.items():
        # CPU over the timed calls and their warm-up calls alike
        made = len(taken) + rounds * min(200, per_round // 5)
        used = ", ".join(f"{node.node_id} {cpu[label, node.node_id] / made * 1e6:.0f}" for node in (a, b))
        results[label] = (*p50_p99(taken), f"CPU per call, µs: {used}")
    results["ratios"] = ratios
    return results


async def throughputs(a: Served, b: Served, total: int, rounds: int) -> dict[str, tuple[float, str]]:
    """Calls per second (median over *rounds*) with 64 in flight through the owner *a*
    and through *b*, alternating, and each node's CPU per call."""
    labels = {"owner (node-a)": a.url, "forwarded (node-b -> node-a)": b.url}
    rates: dict[str, list[float]] = {label: [] for label in labels}
    cpu = {(label, node.node_id): 0.0 for label in labels for node in (a, b)}
    for round_ in range(rounds):
        for label in list(labels) if round_ % 2 == 0 else list(labels)[::-1]:
            before = {node.node_id: cpu_seconds(node.process) for node in (a, b)}
            rates[label].append(await throughput(labels[label], total // rounds, 64))
            for node in (a, b):
                cpu[label, node.node_id] += cpu_seconds(node.process) - before[node.node_id]
    return {
        label: (
            statistics.median(rates[label]),
            ", ".join(f"{node.node_id} {cpu[label, node.node_id] / total * 1e6:.0f}" for node in (a, b)),
        )
        for label in labels
    }


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


async def main(quick: bool) -> None:
    if ETCD is None:
        raise SystemExit("etcd is not installed (apt-get install etcd-server)")
    calls = 500 if quick else 2000
    bulk = 2000 if quick else 8000
    rounds = 5 if quick else 15
    deaths = 2 if quick else 5
    with tempfile.TemporaryDirectory(prefix="spear-cluster-bench-") as tmp:
        root = Path(tmp)
        (root / "etcd").mkdir()
        etcd = EtcdServer(root / "etcd")
        etcd.start()
        try:
            prefix = "/bench/"
            async with (
                serve("node-a", etcd.url, prefix, root) as a,
                serve("node-b", etcd.url, prefix, root) as b,
                serve("node-c", etcd.url, prefix, root) as c,
            ):
                await until_all_see([a.url, b.url, c.url], {"node-a", "node-b", "node-c"})
                async with connect(a.url) as on_a:
                    made = await on_a.invoke("add", [1, 2], task_name="bench", artifact_spec=AGENT)
                assert id_owner(made["task_id"]) == "node-a"
                print(f"cluster: 3 nodes (spear serve), etcd {etcd.url}, lease TTL {TTL} s")
                print("\n-- invoke by name, sequential (owner and forwarded in alternating rounds) --")
                results = await sequential(a, b, calls, rounds=5 if quick else 10)
                ratios = results.pop("ratios")
                for label, (p50, p99, cpu) in results.items():
                    print(f"{label:32} p50 {ms(p50)}  p99 {ms(p99)}  ({calls} calls; {cpu})")
                owner_p50, forwarded_p50 = (results[label][0] for label in results)
                print(
                    f"forwarded / owner p50: {forwarded_p50 / owner_p50:.2f}x"
                    f"  (per round: median {statistics.median(ratios):.2f}x, {min(ratios):.2f}-{max(ratios):.2f}; "
                    "target <= 1.5x)"
                )
                print("\n-- throughput, 64 in flight (owner and forwarded in alternating rounds) --")
                for label, (rate, used) in (await throughputs(a, b, bulk, rounds=2 if quick else 4)).items():
                    print(f"{label:32} {rate:8.0f} calls/s  ({bulk} calls; CPU per call, µs: {used})")

                print("\n-- task-creation race: one new name asked of 3 nodes at once --")
                race: list[float] = []
                for round_ in range(rounds):
                    name = f"race-{round_}"
                    answers: list[dict[str, Any]] = []

                    async def ask(url: str, name: str = name, answers: list[dict[str, Any]] = answers) -> None:
                        async with connect(url) as client:
                            start = time.perf_counter()
                            answers.append(await client.invoke("add", [1, 1], task_name=name, artifact_spec=AGENT))
                            race.append(time.perf_counter() - start)

                    async with trio.open_nursery() as nursery:
                        for served in (a, b, c):
                            nursery.start_soon(ask, served.url)
                    assert len({answer["task_id"] for answer in answers}) == 1, answers
                p50, p99 = p50_p99(race)
                print(f"{'every call of a race':32} p50 {ms(p50)}  p99 {ms(p99)}  max {ms(max(race))}")
                print(f"({rounds} rounds x 3 callers; each round made exactly one task; includes the agent's start)")

                print(f"\n-- owner killed (SIGKILL) -> first successful NEW_TASK through node-b (TTL {TTL} s) --")
                recoveries: list[float] = []
                for death in range(deaths):
                    node_id = f"node-d{death}"
                    async with serve(node_id, etcd.url, prefix, root) as doomed:
                        await until_all_see([b.url], {node_id})
                        async with connect(doomed.url) as on_d:
                            owned = await on_d.invoke("add", [1, 2], task_name=f"phoenix-{death}", artifact_spec=AGENT)
                        assert id_owner(owned["task_id"]) == node_id
                        async with connect(b.url) as on_b:
                            # node-b knows the owner: its view has the claim
                            await on_b.invoke("add", [1, 2], task_name=f"phoenix-{death}")
                            killed = time.perf_counter()
                            doomed.process.kill()
                            while True:
                                try:
                                    again = await on_b.invoke(
                                        "add", [1, 2], task_name=f"phoenix-{death}", artifact_spec=AGENT
                                    )
                                except SpearError:
                                    await trio.sleep(0.02)
                                    continue
                                recoveries.append(time.perf_counter() - killed)
                                assert id_owner(again["task_id"]) != node_id
                                break
                print(
                    f"{'kill -> first success':32} median {statistics.median(recoveries):.2f} s  "
                    f"range {min(recoveries):.2f}-{max(recoveries):.2f} s  ({deaths} deaths; target <= {TTL + 1} s)"
                )
        finally:
            etcd.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak memory (this client process): {peak:.0f} MiB; cores: {os.cpu_count()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    options = parser.parse_args()
    trio.run(main, options.quick or bool(os.environ.get("SPEAR_BENCH_QUICK")))

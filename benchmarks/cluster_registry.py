"""The cluster registry on a real etcd: claim latency (alone and racing) and how long a
dead node stays visible.

Starts its own etcd (Debian's ``etcd-server``) on loopback with a temporary data dir.
Figures, all in the same run:

* **baseline**: one bare ``EtcdClient.txn`` (create-if-absent of one key) and one
  ``EtcdClient.get``, sequential: what etcd and the JSON gateway cost by themselves;
* **claim, uncontended**: ``registry.claim_task`` of a fresh name, sequential;
* **claim race**: 2 and 3 registries (one etcd client each) claim the same fresh name
  at once; every claim's latency (winners and losers alike), and a check that every
  round had exactly one winner;
* **view**: a claim made on one node, until it is in another node's ``ClusterView``
  (the watch's propagation), and a lookup in the view against ``registry.get_task``;
* **expiry**: a registry in a child process claims a task, is killed with SIGKILL, and
  an observer watching the nodes measures the time from the kill to the node's
  "down" event (the lease expiring) and to its task claim's release; with a graceful
  leave (lease revoked) for comparison. TTL 2 s and 5 s.

    python benchmarks/cluster_registry.py            # about 80 s
    python benchmarks/cluster_registry.py --quick    # about 40 s (or SPEAR_BENCH_QUICK=1)

Expectation: the time from death to disappearance is between 2/3 of the TTL (the last
renewal was up to TTL/3 before the kill) and the TTL plus etcd's expiry sweep (500 ms).
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._timing import p50_p99, timed_calls
from spear_actors.cluster import ClusterConfig, ClusterRegistry, ClusterView, NodeInfo, open_registry
from spear_actors.cluster.etcd import Compare, EtcdClient, Op
from tests.cluster.etcd_server import ETCD, EtcdServer

_names = itertools.count()
ROOT = str(Path(__file__).resolve().parent.parent)


def _config(url: str, prefix: str, ttl: int = 10) -> ClusterConfig:
    return ClusterConfig(endpoints=[url], prefix=prefix, lease_ttl_s=ttl, retry_interval_s=0.2)


def _node(node_id: str) -> NodeInfo:
    return NodeInfo(node_id=node_id, endpoints=(f"ws://127.0.0.1:1/{node_id}",), version="bench", capacity=8)


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:9.1f}"


def _row(label: str, samples: list[float]) -> None:
    p50, p99 = p50_p99(samples)
    print(f"  {label:<46} p50 {_us(p50)} µs   p99 {_us(p99)} µs   (n={len(samples)})")


async def bench_baseline(url: str, n: int) -> None:
    async with EtcdClient([url]) as client:

        async def txn() -> None:
            key = f"/bench-raw/{next(_names)}"
            await client.txn([Compare.create_revision(key, "EQUAL", 0)], [Op.put(key, b"x")], [Op.get(key)])

        async def get() -> None:
            await client.get("/bench-raw/0")

        _row("baseline: EtcdClient.txn (create-if-absent)", await timed_calls(txn, n))
        _row("baseline: EtcdClient.get", await timed_calls(get, n))


async def bench_claims(url: str, n: int) -> None:
    async with open_registry(_config(url, "/bench-claim/"), _node("solo")) as registry:

        async def claim() -> None:
            name = f"t{next(_names)}"
            await registry.claim_task(name, f"id-{name}")

        _row("claim_task, uncontended", await timed_calls(claim, n))

    for racers in (2, 3):
        prefix = f"/bench-race-{racers}/"
        samples: list[float] = []
        winners_per_round: list[int] = []
        async with _registries(url, prefix, racers) as registries:
            for round_ in range(n):
                name = f"race-{round_}"
                outcomes: list[bool] = []

                async def claim(
                    registry: ClusterRegistry,
                    name: str = name,
                    outcomes: list[bool] = outcomes,
                    samples: list[float] = samples,
                ) -> None:
                    start = time.perf_counter()
                    result = await registry.claim_task(name, f"{registry.node_id}-{name}")
                    samples.append(time.perf_counter() - start)
                    outcomes.append(result.won)

                async with trio.open_nursery() as nursery:
                    for registry in registries:
                        nursery.start_soon(claim, registry)
                winners_per_round.append(sum(outcomes))
        assert all(w == 1 for w in winners_per_round), "a race with other than one winner"
        _row(f"claim race, {racers} nodes (every claim)", samples)
        print(f"    rounds: {len(winners_per_round)}, each with exactly one winner")


async def bench_view(url: str, n: int) -> None:
    async with _registries(url, "/bench-view/", 2) as (here, there), trio.open_nursery() as nursery:
        view = ClusterView(here)
        await nursery.start(view.run)
        propagation: list[float] = []
        for _ in range(n):
            name = f"v{next(_names)}"
            start = time.perf_counter()
            claim = await there.claim_task(name, f"id-{name}")
            await view.wait_revision(claim.entry.revision)
            propagation.append(time.perf_counter() - start)
            assert view.task(name) is not None
        _row("claim on B until visible in A's ClusterView", propagation)

        async def from_view() -> None:
            assert view.task(name) is not None

        async def from_etcd() -> None:
            assert await here.get_task(name) is not None

        _row("owner lookup: ClusterView.task", await timed_calls(from_view, n))
        _row("owner lookup: registry.get_task (etcd read)", await timed_calls(from_etcd, n))
        nursery.cancel_scope.cancel()


class _registries:
    """Several registries on one prefix, each with its own etcd client."""

    def __init__(self, url: str, prefix: str, count: int) -> None:
        self._managers = [open_registry(_config(url, prefix), _node(f"racer-{i}")) for i in range(count)]

    async def __aenter__(self) -> list[ClusterRegistry]:
        return [await manager.__aenter__() for manager in self._managers]

    async def __aexit__(self, *exc: object) -> None:
        for manager in reversed(self._managers):
            await manager.__aexit__(None, None, None)


CHILD = """
import sys, trio
sys.path.insert(0, {root!r})
from spear_actors.cluster import ClusterConfig, NodeInfo, ClusterState, open_registry
async def main():
    config = ClusterConfig(endpoints=[{url!r}], prefix={prefix!r}, lease_ttl_s={ttl})
    async with open_registry(config, NodeInfo(node_id={node_id!r}, capacity=1)) as registry:
        assert registry.state is ClusterState.CONNECTED, registry.status()
        await registry.claim_task("task-of-" + {node_id!r}, "id-of-" + {node_id!r})
        print("ready", flush=True)
        if {graceful!r}:
            sys.stdin.readline()
            return
        await trio.sleep_forever()
trio.run(main)
"""


async def one_expiry(url: str, ttl: int, graceful: bool) -> tuple[float, float]:
    """Seconds from the child's death (or its leave) to its node's and its task's removal."""
    node_id = f"victim-{next(_names)}"
    prefix = "/bench-expiry/"
    script = CHILD.format(root=ROOT, url=url, prefix=prefix, ttl=ttl, node_id=node_id, graceful=graceful)
    child = await trio.lowlevel.open_process(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        line = b""
        while not line.endswith(b"\n"):
            chunk = await child.stdout.receive_some(64)
            assert chunk, "the child exited before it was ready"
            line += chunk
        assert line.strip() == b"ready", line
        async with (
            open_registry(_config(url, prefix), _node(f"observer-{node_id}")) as observer,
            observer.watch_nodes() as nodes,
            observer.watch_tasks() as tasks,
        ):
            # Let at least one renewal happen, so the kill lands at a random point of the cycle.
            await trio.sleep(ttl / 3 + (next(_names) % 7) * ttl / 21)
            start = time.perf_counter()
            if graceful:
                await child.stdin.send_all(b"leave\n")
            else:
                child.send_signal(signal.SIGKILL)
            node_gone = task_gone = float("nan")
            with trio.fail_after(ttl + 10):
                async for node_event in nodes:
                    if node_event.kind == "down" and node_event.node_id == node_id:
                        node_gone = time.perf_counter() - start
                        break
                async for task_event in tasks:
                    if task_event.kind == "released" and task_event.task_name == f"task-of-{node_id}":
                        task_gone = time.perf_counter() - start
                        break
            return node_gone, task_gone
    finally:
        if child.poll() is None:
            child.kill()
        await child.wait()
        await child.stdin.aclose()
        await child.stdout.aclose()


async def bench_expiry(url: str, trials: int) -> None:
    for ttl in (2, 5):
        for graceful in (False, True):
            node_times: list[float] = []
            task_times: list[float] = []
            for _ in range(trials if not graceful else max(2, trials // 2)):
                node_gone, task_gone = await one_expiry(url, ttl, graceful)
                node_times.append(node_gone)
                task_times.append(task_gone)
            how = "leave (revoke)" if graceful else "SIGKILL"
            print(
                f"  TTL {ttl} s, {how:<15} node gone after median {statistics.median(node_times):6.2f} s"
                f" [{min(node_times):.2f} - {max(node_times):.2f}], its task after median"
                f" {statistics.median(task_times):6.2f} s (n={len(node_times)})"
            )


async def main(quick: bool, version: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = EtcdServer(Path(tmp))
        server.start()
        try:
            print(f"{version}, data dir on {tmp}, Python {sys.version.split()[0]}, trio {trio.__version__}")
            n = 200 if quick else 1000
            print("latency (sequential calls, after a warm-up):")
            await bench_baseline(server.url, n)
            await bench_claims(server.url, n)
            await bench_view(server.url, n)
            print("from a node's death to its disappearance:")
            await bench_expiry(server.url, 3 if quick else 6)
        finally:
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", default=bool(os.environ.get("SPEAR_BENCH_QUICK")))
    args = parser.parse_args()
    if ETCD is None:
        print("skipped: etcd is not installed (apt-get install etcd-server)")
        sys.exit(0)  # `make bench` goes on with the other harnesses
    version = subprocess.run([ETCD, "--version"], capture_output=True, text=True, check=True).stdout.split("\n")[0]
    trio.run(main, args.quick, version)

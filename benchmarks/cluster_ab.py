"""The forwarding hop of two versions of the node, measured in the same minutes.

One etcd; an owner node (this checkout) holding the task ``bench``; one forwarding
node running this checkout and one per ``--baseline DIR`` (another checkout, e.g. an
archive of main), all up at once. Rounds of sequential SYNC calls by name go to the
owner and to each forwarding node in turn (the order flips every round), so the
machine's drifting load weighs on every version alike; printed per target: p50
(median over the rounds, and range), forwarded / owner p50 (median of the rounds'
ratios), and the CPU the target node spent per call.

    python benchmarks/cluster_ab.py                                  # this checkout only
    python benchmarks/cluster_ab.py --baseline /tmp/main --rounds 12
    python benchmarks/cluster_ab.py --baseline /tmp/main --in-flight 64   # throughput instead

With ``--in-flight N`` each round is instead ``--calls`` calls with N in flight on the
target's one client connection, and the figure is calls per second.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._timing import p50_p99, throughput, timed_calls
from benchmarks.cluster import AGENT, ROOT, Served, cpu_seconds, serve, until_all_see
from spear_actors import connect
from tests.cluster.etcd_server import ETCD, EtcdServer


async def main(baselines: list[Path], rounds: int, calls: int, in_flight: int) -> None:
    if ETCD is None:
        raise SystemExit("etcd is not installed (apt-get install etcd-server)")
    with tempfile.TemporaryDirectory(prefix="spear-cluster-ab-") as tmp:
        root = Path(tmp)
        (root / "etcd").mkdir()
        etcd = EtcdServer(root / "etcd")
        etcd.start()
        try:
            async with AsyncExitStack() as stack:
                owner = await stack.enter_async_context(serve("node-a", etcd.url, "/ab/", root, ROOT))
                targets: dict[str, Served] = {"owner (node-a)": owner}
                for index, code in enumerate([ROOT, *baselines]):
                    served = await stack.enter_async_context(serve(f"node-f{index}", etcd.url, "/ab/", root, code))
                    targets[f"via {code}"] = served
                await until_all_see([t.url for t in targets.values()], {t.node_id for t in targets.values()})
                async with connect(owner.url) as on_a:
                    await on_a.invoke("add", [1, 2], task_name="bench", artifact_spec=AGENT)
                clients = {label: await stack.enter_async_context(connect(t.url)) for label, t in targets.items()}
                p50s: dict[str, list[float]] = {label: [] for label in targets}
                cpu: dict[str, float] = dict.fromkeys(targets, 0.0)
                for client in clients.values():  # warm: instances, peer connections
                    await timed_calls(lambda client=client: client.invoke("add", [1, 2], task_name="bench"), 100)
                for round_ in range(rounds):
                    for label in list(targets) if round_ % 2 == 0 else list(targets)[::-1]:
                        client, node = clients[label], targets[label]
                        before = cpu_seconds(node.process)
                        call = lambda client=client: client.invoke("add", [1, 2], task_name="bench")  # noqa: E731
                        if in_flight:
                            await timed_calls(call, 0, warm_up=20)
                            p50s[label].append(await throughput([call], in_flight, calls))
                        else:
                            p50s[label].append(p50_p99(await timed_calls(call, calls, warm_up=20))[0])
                        cpu[label] += cpu_seconds(node.process) - before
            kind = f"calls at {in_flight} in flight" if in_flight else "sequential calls"
            print(f"{rounds} rounds of {calls} {kind} per target, alternated; etcd {etcd.url}")
            owner_p50s = p50s["owner (node-a)"]
            for label, values in p50s.items():
                if in_flight:
                    line = (
                        f"{label:40} {statistics.median(values):,.0f} calls/s [{min(values):,.0f}-{max(values):,.0f}]"
                    )
                else:
                    line = (
                        f"{label:40} p50 {statistics.median(values) * 1000:.3f} ms "
                        f"[{min(values) * 1000:.3f}-{max(values) * 1000:.3f}]"
                    )
                if label != "owner (node-a)":
                    ratios = [v / o for v, o in zip(values, owner_p50s, strict=True)]
                    line += f"  / owner {statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]"
                line += f"  CPU of this node per call {cpu[label] / (rounds * (calls + 20)) * 1e6:.0f} µs"
                print(line)
        finally:
            etcd.stop()
    print(f"cores: {os.cpu_count()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", action="append", type=Path, default=[], help="another checkout's root")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--calls", type=int, default=500, help="calls per target per round")
    parser.add_argument("--in-flight", type=int, default=0, help="measure throughput with this many in flight")
    parser.add_argument("--quick", action="store_true", help="4 rounds of 200 calls")
    options = parser.parse_args()
    quick = options.quick or bool(os.environ.get("SPEAR_BENCH_QUICK"))
    trio.run(main, options.baseline, 4 if quick else options.rounds, 200 if quick else options.calls, options.in_flight)

"""Where a call's time goes in the node: trio task steps, run-loop passes and cProfile.

    .venv/bin/python benchmarks/profile_invoke.py [--n 2000] [--top 25] [--quick] [--paths inproc,ws]

For in-process ``node.invoke`` (caller in the node's loop) and for ws invoke (a client
service in its own process, the ``_peers_spear.py client`` driver of peers.py), over
*n* sequential echo calls to a warm process agent:

  * a ``trio.abc.Instrument`` counts, per call, the task steps (``before_task_step``),
    the wake-ups (``task_scheduled``) and the run-loop passes (``before_io_wait``:
    one per pass; a pass with timeout 0 did not block), and which tasks took the steps;
  * CPU per call of the node process and of its agents (from /proc), unprofiled;
  * cProfile of the node's thread over the same calls, on the thread's CPU time (on wall
    time with ``--wall``: then a write that wakes another process on a busy machine shows
    the time the node waited for a core): the top functions by own time, in µs per call
    (the profiler roughly doubles the cost: read the shares, not the sum).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from _peers_common import PAYLOAD  # noqa: E402
from peers import Driver, cpu_seconds, process_tree  # noqa: E402

from spear_actors import open_node  # noqa: E402
from spear_actors.config import NodeConfig  # noqa: E402
from spear_actors.policy import OperatorPolicy  # noqa: E402

AGENT = ROOT / "examples" / "hello_agent.py"
TASK = "bench"


class LoopCounter(trio.abc.Instrument):
    """While enabled: task steps and their time (by task name), wake-ups, run-loop
    passes and the time spent in the I/O wait (blocked, or polling with timeout 0)."""

    def __init__(self) -> None:
        self.enabled = False
        self.steps: Counter[str] = Counter()
        self.step_time: Counter[str] = Counter()
        self.step_cpu: Counter[str] = Counter()
        self._started_cpu = 0.0
        self.scheduled = 0
        self.passes = 0
        self.passes_not_blocking = 0
        self.io_wait_time = 0.0
        self._started = 0.0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.enabled:
            self.steps[task.name] += 1
            self._started = time.perf_counter()
            self._started_cpu = time.thread_time()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.enabled and self._started:
            self.step_time[task.name] += time.perf_counter() - self._started
            self.step_cpu[task.name] += time.thread_time() - self._started_cpu
            self._started = 0.0

    def task_scheduled(self, task: trio.lowlevel.Task) -> None:
        if self.enabled:
            self.scheduled += 1

    def before_io_wait(self, timeout: float) -> None:
        if self.enabled:
            self.passes += 1
            self.passes_not_blocking += timeout == 0
            self._started = time.perf_counter()

    def after_io_wait(self, timeout: float) -> None:
        if self.enabled and self._started:
            self.io_wait_time += time.perf_counter() - self._started
            self._started = 0.0


def short(name: str) -> str:
    """A task name without the package prefix."""
    return name.removeprefix("spear_actors.")


def report_counts(
    title: str, counter: LoopCounter, calls: int, wall: float, plain_wall: float, cpu: dict[str, float]
) -> None:
    steps = sum(counter.steps.values())
    in_steps = sum(counter.step_time.values())
    print(f"\n== {title}: {calls} sequential calls, {plain_wall / calls * 1e6:.0f} µs per call (wall)")
    print(
        f"   task steps {steps / calls:.2f}/call, wake-ups {counter.scheduled / calls:.2f}/call, "
        f"run-loop passes {counter.passes / calls:.2f}/call "
        f"({counter.passes_not_blocking / calls:.2f} of them not blocking)"
    )
    print("   " + ", ".join(f"{who} CPU {seconds / calls * 1e6:.0f} µs/call" for who, seconds in cpu.items()))
    print(f"   instrumented run (below): {wall / calls * 1e6:.0f} µs per call")
    print(
        f"   wall per call: {in_steps / calls * 1e6:.0f} µs in task steps, "
        f"{counter.io_wait_time / calls * 1e6:.0f} µs in the I/O wait (idle or polling), "
        f"{(wall - in_steps - counter.io_wait_time) / calls * 1e6:.0f} µs in trio's scheduler between them"
    )
    in_steps_cpu = sum(counter.step_cpu.values())
    print(f"   CPU per call in task steps: {in_steps_cpu / calls * 1e6:.0f} µs")
    print("   per call, by task:    steps  CPU µs  wall µs (in its steps)")
    for name, count in counter.steps.most_common(12):
        cpu_us, wall_us = counter.step_cpu[name] / calls * 1e6, counter.step_time[name] / calls * 1e6
        print(f"     {count / calls:12.2f} {cpu_us:7.1f} {wall_us:8.1f}  {short(name)}")


GROUPS = [  # first match wins: (where the function is, the part it belongs to)
    ("trio/_channel.py", "trio memory channels"),
    ("trio/_abc.py", "trio memory channels"),
    ("trio/_core/_io_epoll.py", "trio run loop: epoll"),
    ("select.epoll", "trio run loop: epoll"),
    ("trio/_core/", "trio run loop: scheduling, cancel scopes, checkpoints"),
    ("outcome", "trio run loop: scheduling, cancel scopes, checkpoints"),
    ("_contextvars", "trio run loop: scheduling, cancel scopes, checkpoints"),
    # trio's Instruments is a UserDict: `"before_task_step" in instruments` on every step
    ("collections/__init__.py", "trio run loop: scheduling, cancel scopes, checkpoints"),
    ("trio/_socket.py", "trio sockets and streams"),
    ("trio/_highlevel", "trio sockets and streams"),
    ("trio/", "trio, other"),
    ("posix.write", "syscalls: socket write/read"),
    ("posix.read", "syscalls: socket write/read"),
    ("_socket.socket", "syscalls: socket write/read"),
    ("trio_websocket/", "websocket: trio-websocket + wsproto"),
    ("wsproto/", "websocket: trio-websocket + wsproto"),
    ("h11/", "websocket: trio-websocket + wsproto"),
    ("websockets/", "websocket: websockets (sans-IO core)"),
    ("msgpack", "msgpack"),
    ("spear_actors/actors/", "spear: actors (manager, task, instance, executions)"),
    ("spear_actors/protocol/", "spear: protocol (connection, messages, framing, outbox)"),
    ("spear_actors/runtimes/", "spear: runtimes (process agent link)"),
    ("spear_actors/", "spear: node, gateway, model"),
    ("uuid", "uuid4"),
    ("dataclasses", "dataclasses (replace, init)"),
    ("<string>", "dataclasses (replace, init)"),  # generated __init__ of (frozen) dataclasses
    ("enum", "enum"),
    ("contextlib", "contextlib (@contextmanager)"),
    ("~:0(", "builtins (len, isinstance, getattr... called from all of the above)"),
]


def group_of(where: str) -> str:
    """The part of the stack a profiled function belongs to (see GROUPS)."""
    return next((name for marker, name in GROUPS if marker in where), "other")


def report_profile(title: str, profile: cProfile.Profile, calls: int, top: int, clock: str, node_cpu: float) -> None:
    stats = pstats.Stats(profile)
    rows = []
    total = 0.0
    for (filename, line, function), (_, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        total += tottime
        rows.append((tottime, cumtime, ncalls, f"{short_path(filename)}:{line}({function})"))
    rows.sort(reverse=True)
    groups: Counter[str] = Counter()
    for tottime, _, _, where in rows:
        groups[group_of(where)] += tottime
    print(f"\n== cProfile ({clock}), {title}: {total / calls * 1e6:.0f} µs per call under the profiler; top {top}:")
    print("   own time by part (share; µs/call = share x the node's unprofiled CPU per call):")
    for name, tottime in groups.most_common():
        print(f"     {tottime / total:6.1%} {tottime / total * node_cpu * 1e6:7.1f}  {name}")
    print(f"   {'own µs/call':>11} {'share':>6} {'cum µs/call':>11} {'calls/call':>10}  function")
    for tottime, cumtime, ncalls, where in rows[:top]:
        print(
            f"   {tottime / calls * 1e6:11.1f} {tottime / total:6.1%} {cumtime / calls * 1e6:11.1f}"
            f" {ncalls / calls:10.2f}  {where}"
        )


def short_path(filename: str) -> str:
    """A source path from the package or library root on."""
    for marker in ("/spear_actors/", "site-packages/", "/lib/python3.11/"):
        if marker in filename:
            head = "spear_actors/" if marker == "/spear_actors/" else ""
            return head + filename.split(marker, 1)[1]
    return filename


class Measure:
    """Runs a batch of calls under the counter, or under cProfile, in the node's loop."""

    def __init__(self, counter: LoopCounter, cpu_timer: bool) -> None:
        self.counter = counter
        self.cpu_timer = cpu_timer
        self.me = os.getpid()
        self.not_agents: set[int] = {self.me}
        self.last_node_cpu = 0.0

    def cpu(self) -> dict[str, float]:
        agents = process_tree([self.me]) - self.not_agents
        return {"node": cpu_seconds(self.me), "agents": sum(cpu_seconds(pid) for pid in agents)}

    async def counted(self, title: str, run: Callable[[], Awaitable[None]], calls: int) -> None:
        # Time and CPU without the instrument first (its hooks cost ~1 µs each), then counts.
        before = self.cpu()
        start = time.perf_counter()
        await run()
        plain_wall = time.perf_counter() - start
        after = self.cpu()
        used = {who: after[who] - before[who] for who in before}
        self.last_node_cpu = used["node"] / calls
        self.counter.__init__()  # type: ignore[misc]
        trio.lowlevel.add_instrument(self.counter)
        self.counter.enabled = True
        start = time.perf_counter()
        await run()
        wall = time.perf_counter() - start
        self.counter.enabled = False
        trio.lowlevel.remove_instrument(self.counter)
        report_counts(title, self.counter, calls, wall, plain_wall, used)

    async def profiled(self, title: str, run: Callable[[], Awaitable[None]], calls: int, top: int) -> None:
        profile = cProfile.Profile(time.thread_time if self.cpu_timer else time.perf_counter)
        profile.enable()
        await run()
        profile.disable()
        clock = "thread CPU time" if self.cpu_timer else "wall time"
        report_profile(title, profile, calls, top, clock, self.last_node_cpu)


async def main(n: int, top: int, cpu_timer: bool, paths: set[str]) -> None:
    counter = LoopCounter()
    measure = Measure(counter, cpu_timer)
    config = NodeConfig(
        listen=["ws://127.0.0.1:0", "tcp://127.0.0.1:0"],
        data_dir=Path(tempfile.mkdtemp(prefix="spear-profile-")),
        policy=OperatorPolicy(artifact_roots=[ROOT / "examples"]),
    )
    print(f"python {sys.version.split()[0]}, trio {trio.__version__}; n={n}")
    async with open_node(config) as node:
        spec = {"location": str(AGENT)}
        await node.invoke("echo", PAYLOAD, task_name=TASK, artifact_spec=spec, policy={"max_instances": 1})

        async def in_process() -> None:
            for _ in range(n):
                await node.invoke("echo", PAYLOAD, task_name=TASK)

        if "inproc" in paths:
            await in_process()  # warm-up
            await measure.counted("in-process node.invoke", in_process, n)
            await measure.profiled("in-process node.invoke", in_process, n, top)
        if "ws" not in paths:
            return

        urls = {endpoint.scheme: str(endpoint) for endpoint in node.endpoints}
        argv = [sys.executable, str(HERE / "_peers_spear.py"), "client", urls["ws"], urls["tcp"], str(os.getpid())]
        log_dir = Path(tempfile.mkdtemp(prefix="spear-profile-logs-"))
        client = await trio.to_thread.run_sync(Driver, "client", argv, log_dir)
        measure.not_agents.add(client.pid)
        try:

            async def over_ws() -> None:
                # The driver warms up with n // 5 calls (at most 200) before its n timed ones.
                await trio.to_thread.run_sync(client.request, {"op": "seq", "n": n, "target": "ws"})

            ws_calls = n + min(200, max(10, n // 5))
            await over_ws()  # warm-up
            await measure.counted("ws invoke (client in its own process)", over_ws, ws_calls)
            await measure.profiled("ws invoke, node side", over_ws, ws_calls, top)
        finally:
            await trio.to_thread.run_sync(client.stop)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000, help="sequential calls per measurement")
    parser.add_argument("--top", type=int, default=25, help="functions listed from cProfile")
    parser.add_argument("--quick", action="store_true", help="n=500")
    parser.add_argument("--wall", action="store_true", help="cProfile on wall time (default: the thread's CPU time)")
    parser.add_argument("--paths", default="inproc,ws", help="what to measure: inproc, ws or both (default)")
    args = parser.parse_args()
    quick = args.quick or bool(os.environ.get("BENCH_QUICK") or os.environ.get("SPEAR_BENCH_QUICK"))
    trio.run(main, 500 if quick else args.n, args.top, not args.wall, set(args.paths.split(",")))

"""The agent SDK's CPU per call, against a bare protocol agent measured in the same run.

    .venv/bin/python benchmarks/agent_cpu.py [--n 4000] [--rounds 3] [--quick] [--profile]

Both agents are warm process instances of one ``ProcessRuntime`` in this process (the
node's side of the agent link, no actors, no gateway); each round sends *n* sequential
``execute`` calls of ``echo`` (payload ``{"a": 1, "b": "x" * 32}``) to the SDK agent
(``examples/hello_agent.py``) and *n* to the bare agent, 250 to one then 250 to the
other (who goes first rotates between rounds), so that the load of other work on the
machine falls on both alike. The **bare protocol agent** is this file run with ``--bare-agent``: one thread,
the same :class:`~spear_actors.protocol.core.ProtocolCore` as the SDK, a blocking
socket, every answer written inline by the thread that read the request — the least
an agent speaking the protocol can do per call.

Agent CPU is read from ``/proc/<pid>/task/*/schedstat`` (nanoseconds on a CPU, summed
over the agent's threads) rather than ``utime + stime`` of ``/proc/<pid>/stat``:
those count in 10 ms ticks, 8 ticks for 4,000 calls of 20 µs, too coarse for a ratio.
Node CPU per call is this process's CPU (``time.process_time``) over the same calls.

Prints, per round, agent CPU µs per call for the SDK and the bare agent and their
ratio, node CPU µs per call and p50/p99 latency of both; then the median and range of
each over the rounds. ``--profile`` then runs the SDK agent once more under cProfile
(``SPEAR_AGENT_PROFILE``, see below) and prints its top functions per call.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

SELF = Path(__file__).resolve()
HERE = SELF.parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

SDK_AGENT = ROOT / "examples" / "hello_agent.py"
PAYLOAD = {"a": 1, "b": "x" * 32}
WAITS = {"<built-in method time.sleep>", "<method 'acquire' of '_thread.lock' objects>"}
CHUNK = 250
"""Calls to one agent before the next takes its turn, within a round."""
PROFILE_ENV = "SPEAR_AGENT_PROFILE"
"""When set (to a path), the SDK agent started here runs under cProfile and dumps its
stats there when it exits (see :func:`run_profiled_agent`)."""


# -- the bare protocol agent (a child process) ---------------------------------------------
def bare_agent() -> None:
    """Serve ``echo`` with one thread: read, feed the core, answer inline, repeat."""
    from spear_actors.agent.link import AgentLink, dial
    from spear_actors.protocol.core import ConnectionClosed, RequestReceived
    from spear_actors.protocol.framing import encode_frame
    from spear_actors.protocol.messages import PROTOCOL_VERSION, Hello

    sock = dial(os.environ["SERVICE_ADDR"])
    link = AgentLink(sock)  # for its handshake only; the loop below is the whole agent
    link.handshake(Hello(PROTOCOL_VERSION, "agent", os.environ["SECRET"], os.environ.get("SPEAR_INSTANCE_ID"), {}))
    core = link.core
    assert core is not None
    while True:
        data = sock.recv(65536)
        core.receive_data(data, time.monotonic())
        out = [encode_frame(body) for body in core.data_to_send()]
        while (event := core.next_event()) is not None:
            if isinstance(event, ConnectionClosed):
                sock.close()
                return
            if isinstance(event, RequestReceived):
                body = core.respond(event.id, {"value": event.params["params"], "logs": []})
                if body is not None:
                    out.append(encode_frame(body))
            out.extend(encode_frame(body) for body in core.data_to_send())
        if out:
            try:
                sock.sendall(b"".join(out))
            except OSError:
                return
        if not data:
            return


def run_profiled_agent(script: Path, out: str) -> None:
    """Run the agent *script* as ``__main__`` with a cProfile profiler (thread CPU
    time) in each of its threads; on SIGUSR1, dump their merged stats to *out*."""
    import cProfile
    import pstats
    import runpy
    import signal
    import threading

    profiles: list[cProfile.Profile] = []

    def start() -> None:
        profile = cProfile.Profile(time.thread_time)
        profiles.append(profile)
        profile.enable()

    def in_new_thread(*args: Any) -> None:  # the first profile event of a new thread
        sys.setprofile(None)
        start()

    def dump(*args: Any) -> None:
        stats = pstats.Stats(profiles[0])  # stops the main thread's profiler
        for profile in profiles[1:]:
            stats.add(profile)  # the other threads' stats so far
        stats.dump_stats(out + ".part")
        os.rename(out + ".part", out)

    signal.signal(signal.SIGUSR1, dump)
    threading.setprofile(in_new_thread)
    start()
    runpy.run_path(str(script), run_name="__main__")


# -- cpu readings -------------------------------------------------------------------------
def agent_threads_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each live thread of *pid* (schedstat: nanoseconds), by thread
    id (``/proc`` knows no Python thread names before Python 3.14)."""
    seconds: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return seconds
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                seconds[tid] = int(stat.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            continue
    return seconds


# -- the harness ---------------------------------------------------------------------------
class Figures:
    """One agent's figures over one round."""

    def __init__(
        self, agent_us: float, node_us: float, p50_us: float, p99_us: float, threads_us: dict[str, float]
    ) -> None:
        self.agent_us = agent_us
        self.threads_us = threads_us
        """Agent CPU µs per call by thread id."""
        self.node_us = node_us
        self.p50_us = p50_us
        self.p99_us = p99_us


async def measure_round(agents: dict[str, tuple[Callable[[], Awaitable[Any]], int]], n: int) -> dict[str, Figures]:
    """*n* calls to each agent, in chunks of :data:`CHUNK` taking turns (so a change in
    the machine's load falls on all of them alike), after a warm-up."""
    from _timing import p50_p99, timed_calls

    samples: dict[str, list[float]] = {name: [] for name in agents}
    threads_s: dict[str, dict[str, float]] = {name: {} for name in agents}
    node_s = dict.fromkeys(agents, 0.0)
    for call, _ in agents.values():
        for _ in range(min(200, n // 10)):
            await call()
    for start in range(0, n, CHUNK):
        for name, (call, pid) in agents.items():
            threads_before, node_before = agent_threads_cpu(pid), time.process_time()
            samples[name] += await timed_calls(call, min(CHUNK, n - start), warm_up=0)
            threads_after, node_s[name] = agent_threads_cpu(pid), node_s[name] + time.process_time() - node_before
            for thread, seconds in threads_after.items():
                used = seconds - threads_before.get(thread, 0.0)
                threads_s[name][thread] = threads_s[name].get(thread, 0.0) + used
    figures = {}
    for name in agents:
        threads_us = {thread: seconds / n * 1e6 for thread, seconds in threads_s[name].items()}
        p50, p99 = p50_p99(samples[name])
        figures[name] = Figures(sum(threads_us.values()), node_s[name] / n * 1e6, p50 * 1e6, p99 * 1e6, threads_us)
    return figures


def summary(label: str, values: list[float], unit: str = "") -> str:
    return f"{label} {statistics.median(values):.2f}{unit} [{min(values):.2f}-{max(values):.2f}]"


async def main(n: int, rounds: int, profile: bool, sdk_tree: Path | None) -> None:
    import contextlib

    import trio

    from spear_actors.model import ArtifactSpec
    from spear_actors.runtimes.base import Call, InstanceSpec
    from spear_actors.runtimes.process import ProcessRuntime

    print(f"python {sys.version.split()[0]}, trio {trio.__version__}; n={n} sequential calls, {rounds} rounds")
    runtime = ProcessRuntime(f"unix://{tempfile.mkdtemp()}/agents.sock")
    specs = {
        "SDK": InstanceSpec("sdk", "t", "t", ArtifactSpec(location=str(SDK_AGENT)), SDK_AGENT),
        "bare": InstanceSpec(
            "bare", "t", "t", ArtifactSpec(location=str(SELF), config={"args": ["--bare-agent"]}), SELF
        ),
    }
    if sdk_tree is not None:  # the SDK of another tree (a `git archive`), its own example agent
        agent = sdk_tree / "examples" / "hello_agent.py"
        config = {"env": {"PYTHONPATH": str(sdk_tree)}}
        specs["old SDK"] = InstanceSpec("old", "t", "t", ArtifactSpec(location=str(agent), config=config), agent)
    call = Call("x", "echo", PAYLOAD)
    results: dict[str, list[Figures]] = {name: [] for name in specs}
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        async with contextlib.AsyncExitStack() as stack:
            agents = {}
            for name, spec in specs.items():
                instance = await stack.enter_async_context(runtime.open_instance(spec))
                agents[name] = (partial(instance.execute, call, None, lambda line: None), instance.describe()["pid"])
            names = list(agents)
            others = [name for name in names if name != "bare"]
            print(
                f"{'round':>5}  "
                + " ".join(f"{name + ' µs':>10}" for name in names)
                + "  "
                + " ".join(f"{name + '/bare':>12}" for name in others)
                + "   node µs    p50 µs    p99 µs  ("
                + " / ".join(names)
                + ")"
            )
            for i in range(rounds):
                order = names[i % len(names) :] + names[: i % len(names)]  # who goes first rotates
                figures = await measure_round({name: agents[name] for name in order}, n)
                for name in names:
                    results[name].append(figures[name])
                last = {name: results[name][-1] for name in names}
                print(
                    f"{i + 1:>5}  "
                    + " ".join(f"{last[name].agent_us:10.1f}" for name in names)
                    + "  "
                    + " ".join(f"{last[name].agent_us / last['bare'].agent_us:11.2f}x" for name in others)
                    + "   "
                    + " / ".join(f"{last[name].node_us:.1f}" for name in names)
                    + "   "
                    + " / ".join(f"{last[name].p50_us:.1f}" for name in names)
                    + "   "
                    + " / ".join(f"{last[name].p99_us:.1f}" for name in names)
                )
        if profile:
            await profile_sdk(runtime, call, n)
        nursery.cancel_scope.cancel()
    print("agent CPU µs per call by thread, in the order they started (SDK: reader, writer, heartbeat, watchdog):")
    for name, rounds_figures in results.items():
        by_thread = "; ".join(
            ", ".join(f"{figures.threads_us[tid]:.2f}" for tid in sorted(figures.threads_us, key=int))
            for figures in rounds_figures
        )
        print(f"  {name:>7}, each round: {by_thread}")
    print("median [range] over the rounds:")
    for name, figures in results.items():
        print(
            f"  {name:>7}: agent CPU µs per call "
            + summary("", [f.agent_us for f in figures])
            + ", node CPU µs per call"
            + summary("", [f.node_us for f in figures])
            + ", p50 µs"
            + summary("", [f.p50_us for f in figures])
            + ", p99 µs"
            + summary("", [f.p99_us for f in figures])
        )
    for name in results:
        if name != "bare":
            ratios = [a.agent_us / b.agent_us for a, b in zip(results[name], results["bare"], strict=True)]
            target = "  (issue 15's target: ≤ 1.3x)" if name == "SDK" else ""
            print("  " + summary(f"{name} / bare, agent CPU:", ratios, "x") + target)


async def profile_sdk(runtime: Any, call: Any, n: int) -> None:
    """One more SDK agent, under cProfile, over *n* calls: its top functions."""
    import pstats
    import signal

    import trio

    from spear_actors.model import ArtifactSpec
    from spear_actors.runtimes.base import InstanceSpec

    out = tempfile.mktemp(suffix=".prof")
    config = {"args": ["--profiled-agent", str(SDK_AGENT)], "env": {PROFILE_ENV: out}}
    spec = InstanceSpec("profiled", "t", "t", ArtifactSpec(location=str(SELF), config=config), SELF)
    async with runtime.open_instance(spec) as instance:
        for _ in range(n):
            await instance.execute(call, None, lambda line: None)
        os.kill(instance.describe()["pid"], signal.SIGUSR1)
        while not await trio.Path(out).exists():
            await trio.sleep(0.05)
    stats = pstats.Stats(out)
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)  # type: ignore[attr-defined]
    total = sum(row[1][2] for row in rows)
    print(f"\ncProfile of the SDK agent (thread CPU time, all threads): {total / n * 1e6:.1f} µs per call profiled")
    print(f"  {'own µs/call':>11} {'calls/call':>10}  function")
    print("  (waits in progress at the dump, e.g. time.sleep and lock acquire, read as nonsense: left out)")
    rows = [row for row in rows if row[0][2] not in WAITS]
    for (filename, line, function), (_, ncalls, tottime, _, _) in rows[:30]:
        where = filename.split("/spear_actors/", 1)[-1].split("/lib/python3", 1)[-1]
        print(f"  {tottime / n * 1e6:11.2f} {ncalls / n:10.2f}  {where}:{line}({function})")
    os.unlink(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=4000, help="sequential calls per agent per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="n=1000")
    parser.add_argument("--profile", action="store_true", help="then profile the SDK agent")
    parser.add_argument(
        "--sdk-tree", type=Path, help="also measure the SDK of this source tree (e.g. a `git archive` of a commit)"
    )
    parser.add_argument("--bare-agent", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profiled-agent", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_agent:
        bare_agent()
    elif args.profiled_agent:
        run_profiled_agent(Path(args.profiled_agent), os.environ[PROFILE_ENV])
    else:
        import trio

        quick = args.quick or bool(os.environ.get("BENCH_QUICK") or os.environ.get("SPEAR_BENCH_QUICK"))
        trio.run(main, 1000 if quick else args.n, args.rounds, args.profile, args.sdk_tree)

"""Hostile clients against a real node: does everyone else stay served?

    .venv/bin/python benchmarks/hostile.py [--seconds 5] [--only NAME ...] [--same-process]

Starts ``spear serve`` in a subprocess (a ws and a tcp gateway, task ``hello`` with
two warm instances), then runs each attack of issue 12 for a bounded time while a
well-behaved client calls ``get_health`` every 10 ms on its own connection (the
attack runs in a child process, so its own CPU never delays that client). Per
attack it prints the well-behaved client's p50/p99 latency (and its errors), agent
instances lost (warm instances of ``hello`` that were replaced), the node's RSS
before / peak / after, and whether the node is alive afterwards.

Targets (issue 12): p99 ≤ 50 ms, 0 instances lost, RSS peak within the documented
bound, node alive after every attack.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _timing import p50_p99  # noqa: E402

from spear_actors import SpearError, connect  # noqa: E402
from spear_actors.client import Client  # noqa: E402
from spear_actors.protocol.framing import encode_frame  # noqa: E402
from spear_actors.protocol.messages import Hello, Request, encode_message  # noqa: E402

AGENT = ROOT / "examples" / "hello_agent.py"
FLOOD_AGENT = """
import sys
from spear_actors.agent import Agent
agent = Agent("flood")

@agent.function
def flood(mib):
    chunk = "x" * (1 << 20)
    for _ in range(mib):
        sys.stdout.write(chunk)
    sys.stdout.flush()
    return mib

if __name__ == "__main__":
    agent.run()
"""

Attack = Callable[["Target", float], Awaitable[str]]


class Target:
    """The node under attack: its urls, pid and a client for set-up calls."""

    def __init__(self, ws_url: str, tcp_url: str, pid: int, workdir: Path) -> None:
        self.ws_url = ws_url
        self.tcp_url = tcp_url
        self.host, port = tcp_url.removeprefix("tcp://").rsplit(":", 1)
        self.tcp_port = int(port)
        self.pid = pid
        self.workdir = workdir


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


async def raw_connection(target: Target) -> trio.SocketStream:
    """A TCP connection that has said hello (the welcome is left unread)."""
    stream = await trio.open_tcp_stream(target.host, target.tcp_port)
    await stream.send_all(encode_frame(encode_message(Hello(role="client"))))
    return stream


# -- the attacks -------------------------------------------------------------------


async def watch_many_unknown_ids(target: Target, seconds: float) -> str:
    """watch_executions with 10,000 unknown ids (the maximum), again and again."""
    rounds = 0
    async with connect(target.ws_url) as client:
        with trio.move_on_after(seconds):
            while True:
                async with client.watch_executions([f"exec-nope-{i}" for i in range(10_000)]) as items:
                    async for _ in items:
                        pass
                rounds += 1
    return f"{rounds} watches of 10,000 ids"


async def watch_over_the_limit(target: Target, seconds: float) -> str:
    """watch_executions with 200,000 ids (refused: over the documented maximum)."""
    refused = 0
    async with connect(target.ws_url) as client:
        with trio.move_on_after(seconds):
            while True:
                try:
                    async with client.watch_executions([f"exec-{i}" for i in range(200_000)]) as items:
                        async for _ in items:
                            pass
                except SpearError:
                    refused += 1
    return f"{refused} refused"


async def pipelined_listings_never_read(target: Target, seconds: float) -> str:
    """300 pipelined list_executions(limit=1000) per connection, answers never read."""
    sent = 0
    async with trio.open_nursery() as nursery:

        async def one() -> None:
            nonlocal sent
            stream = await raw_connection(target)
            frames = b"".join(
                encode_frame(encode_message(Request(i, "list_executions", {"limit": 1000}))) for i in range(1, 301)
            )
            with trio.move_on_after(seconds):
                await stream.send_all(frames)
                sent += 300
                await trio.sleep_forever()
            await trio.aclose_forcefully(stream)

        for _ in range(4):
            nursery.start_soon(one)
    return f"{sent} requests sent, none read"


async def echoes_never_read(target: Target, seconds: float) -> str:
    """SYNC echo calls of 64 KiB each, pipelined, answers never read, no pongs."""
    sent = 0
    stream = await raw_connection(target)
    payload = {"blob": "x" * 65536}
    with trio.move_on_after(seconds):
        for i in range(1, 4001):
            request = {"task_name": "hello", "function_name": "echo", "parameters": payload}
            await stream.send_all(encode_frame(encode_message(Request(i, "invoke", request))))
            sent += 1
        await trio.sleep_forever()
    await trio.aclose_forcefully(stream)
    return f"{sent} echoes sent, none read"


async def partial_hello_frames(target: Target, seconds: float) -> str:
    """24 connections announcing a 16 MiB hello, each sending 4 MiB of it, then silence."""
    streams = []
    chunk = b"\x91" * (1 << 20)
    with trio.move_on_after(seconds):
        for _ in range(24):
            stream = await trio.open_tcp_stream(target.host, target.tcp_port)
            streams.append(stream)
            await stream.send_all((16 << 20).to_bytes(8, "little"))
            for _ in range(4):
                await stream.send_all(chunk)
        await trio.sleep_forever()
    for stream in streams:
        await trio.aclose_forcefully(stream)
    return f"{len(streams)} partial hellos"


async def _idle_connections(host: str, port: int, seconds: float) -> str:
    """1,500 TCP connections to *host*:*port* that send nothing, held for *seconds*."""
    streams: list[trio.SocketStream] = []
    failed = 0
    with trio.move_on_after(seconds):
        for _ in range(1500):
            try:
                streams.append(await trio.open_tcp_stream(host, port))
            except OSError:
                failed += 1
        await trio.sleep_forever()
    for stream in streams:
        await trio.aclose_forcefully(stream)
    return f"{len(streams)} opened, {failed} failed to connect"


async def connection_flood(target: Target, seconds: float) -> str:
    """1,500 idle TCP connections (over the node's connection limit)."""
    return await _idle_connections(target.host, target.tcp_port, seconds)


async def websocket_upgrade_flood(target: Target, seconds: float) -> str:
    """1,500 TCP connections to the websocket port that never send their HTTP upgrade."""
    host, port = target.ws_url.removeprefix("ws://").rsplit(":", 1)
    return await _idle_connections(host, int(port), seconds)


async def agent_output_flood(target: Target, seconds: float) -> str:
    """An agent writing 200 MiB to stdout without a newline."""
    script = target.workdir / "flood_agent.py"
    script.write_text(FLOOD_AGENT)
    async with connect(target.ws_url) as client:
        with trio.move_on_after(seconds):
            try:
                await client.invoke(
                    "flood", [200], task_name="flood", artifact_spec={"location": str(script)},
                    context={"timeout_ms": int(seconds * 1000)},
                )  # fmt: skip
                return "finished"
            except SpearError as exc:
                return f"{exc.code.value}"
    return "still running"


async def forced_cancels(target: Target, seconds: float) -> str:
    """Five cancel_execution(force=true) of running calls on the warm task."""
    async with connect(target.ws_url) as client:
        for n in range(5):
            accepted = await client.invoke(
                "sleep", [30], task_name="hello", execution_mode="ASYNC", context={"execution_id": f"exec-kill-{n}"}
            )
            while (await client.get_execution(accepted["execution_id"]))["status"] == "PENDING":
                await trio.sleep(0.02)
            await client.cancel_execution(accepted["execution_id"], force=True)
        await trio.sleep(min(seconds, 3))
    return "5 forced cancels"


async def deep_nesting(target: Target, seconds: float) -> str:
    """Request bodies nested 100,000 levels deep."""
    sent = 0
    body = b"\x91" * 100_000 + b"\xc0"
    with trio.move_on_after(seconds):
        while True:
            stream = await raw_connection(target)
            await stream.send_all(encode_frame(body))
            sent += 1
            with trio.move_on_after(0.5):
                while await stream.receive_some(65536):
                    pass
            await trio.aclose_forcefully(stream)
    return f"{sent} sent"


async def no_attack(target: Target, seconds: float) -> str:
    """The baseline: nothing but the well-behaved client."""
    await trio.sleep(seconds)
    return "baseline"


ATTACKS: dict[str, Attack] = {
    "baseline": no_attack,
    "watch_10k_unknown": watch_many_unknown_ids,
    "watch_200k_refused": watch_over_the_limit,
    "list_pipelined_unread": pipelined_listings_never_read,
    "echo_unread": echoes_never_read,
    "partial_hello": partial_hello_frames,
    "connection_flood": connection_flood,
    "ws_upgrade_flood": websocket_upgrade_flood,
    "agent_stdout_flood": agent_output_flood,
    "forced_cancels": forced_cancels,
    "deep_nesting": deep_nesting,
}


# -- measuring ---------------------------------------------------------------------


async def instance_ids(client: Client) -> set[str]:
    task = await client.get_task(await task_id(client, "hello"))
    return {instance["instance_id"] for instance in task["instances"]}


async def task_id(client: Client, name: str) -> str:
    page = await client.list_tasks(prefix=name)
    return next(t["task_id"] for t in page["tasks"] if t["task_name"] == name)


async def attack_in_child(target: Target, name: str, seconds: float) -> str:
    """Run attack *name* in a child process and return its outcome line: the
    attacker's own CPU (building and encoding 200,000 ids takes 30-50 ms) must not
    hold the well-behaved client's loop, or its latency measures the attacker."""
    spec = json.dumps([target.ws_url, target.tcp_url, target.pid, str(target.workdir)])
    done = await trio.run_process(
        [sys.executable, __file__, "--attack", name, "--target", spec, "--seconds", str(seconds)],
        capture_stdout=True,
        check=False,
    )
    lines = done.stdout.decode().strip().splitlines()
    return lines[-1] if lines else f"attack process exited {done.returncode}"


async def attack_alone(name: str, spec: str, seconds: float) -> None:
    """The child side of :func:`attack_in_child`: print the attack's outcome."""
    ws_url, tcp_url, pid, workdir = json.loads(spec)
    try:
        outcome = await ATTACKS[name](Target(ws_url, tcp_url, pid, Path(workdir)), seconds)
    except Exception as exc:  # an attack failing is a result too
        outcome = f"attack ended: {exc!r}"[:60]
    print(outcome, flush=True)


async def run_attack(
    target: Target, name: str, attack: Attack, seconds: float, same_process: bool = False
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    peak = before = rss_mib(target.pid)
    async with connect(target.ws_url, connect_timeout=30) as observer:
        lost_before = await instance_ids(observer)
        done = trio.Event()
        outcome = ""

        async def probe() -> None:
            nonlocal errors
            while not done.is_set():
                start = time.perf_counter()
                try:
                    await observer.get_health()
                    latencies.append(time.perf_counter() - start)
                except SpearError:
                    errors += 1
                    latencies.append(time.perf_counter() - start)
                await trio.sleep(0.01)

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_mib(target.pid))
                await trio.sleep(0.05)

        async def attack_then_stop() -> None:
            nonlocal outcome
            try:
                outcome = await (attack(target, seconds) if same_process else attack_in_child(target, name, seconds))
            except Exception as exc:  # an attack failing is a result too
                outcome = f"attack ended: {exc!r}"[:60]
            finally:
                done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe)
            nursery.start_soon(sample)
            nursery.start_soon(attack_then_stop)
        await trio.sleep(1.0)
        try:
            with trio.fail_after(10):
                after_ids = await instance_ids(observer)
            alive = True
        except (SpearError, trio.TooSlowError):
            after_ids, alive = set(), False
    try:
        os.kill(target.pid, 0)
    except OSError:
        alive = False
    p50, p99 = p50_p99(latencies)
    return {
        "attack": name,
        "outcome": outcome,
        "p50_ms": p50 * 1000,
        "p99_ms": p99 * 1000,
        "probe_errors": errors,
        "instances_lost": len(lost_before - after_ids),
        "rss_before": before,
        "rss_peak": peak,
        "rss_after": rss_mib(target.pid),
        "alive": alive,
    }


def prepare(workdir: Path) -> tuple[Path, Any]:
    """The node's config file and log file in *workdir* (set-up, before any timing)."""
    workdir.mkdir(parents=True)
    config = workdir / "node.toml"
    config.write_text(
        "\n".join(
            [
                'listen = ["ws://127.0.0.1:0", "tcp://127.0.0.1:0"]',
                "[tasks.hello]",
                f"artifact = {{ location = {json.dumps(str(AGENT))} }}",
                "policy = { min_instances = 2, max_instances = 4 }",
                "[policy]",
                f"artifact_roots = [{json.dumps(str(workdir))}]  # the flood agent is written here",
            ]
        )
    )
    return config, (workdir / "node.log").open("wb")


async def start_node(workdir: Path) -> tuple[trio.Process, Target]:
    config, log_file = prepare(workdir)
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "spear_actors.cli",
            "serve",
            "--config",
            str(config),
            "--data-dir",
            str(workdir / "d"),
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.PIPE,
        stderr=log_file,
    )
    log_file.close()  # the child has its own copy
    assert process.stdout is not None
    output = b""
    with trio.fail_after(30):
        while len(re.findall(rb"listening on (\S+)", output)) < 2:
            output += await process.stdout.receive_some(4096)
    urls = [u.decode() for u in re.findall(rb"listening on (\S+)", output)]
    target = Target(urls[0], urls[1], process.pid, workdir)
    async with connect(target.ws_url) as client:
        with trio.fail_after(30):
            while len(await instance_ids(client)) < 2:
                await trio.sleep(0.1)
    return process, target


async def main(seconds: float, only: list[str], same_process: bool = False) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"each attack {seconds:g} s; well-behaved client: get_health every 10 ms on its own connection")
    header = (
        f"{'attack':24} {'p50 ms':>7} {'p99 ms':>8} {'errs':>5} {'lost':>5} "
        f"{'RSS MiB before/peak/after':>27} {'alive':>6}  outcome"
    )
    print(header)
    with tempfile.TemporaryDirectory(prefix="spear-hostile-") as tmp:
        for name, attack in ATTACKS.items():
            if only and name not in only:
                continue
            # a fresh node per attack: one attack's leftovers never colour the next
            process, target = await start_node(Path(tmp) / name)
            try:
                row = await run_attack(target, name, attack, seconds, same_process)
            finally:
                process.terminate()
                with trio.move_on_after(15):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            rss = f"{row['rss_before']:.0f} / {row['rss_peak']:.0f} / {row['rss_after']:.0f}"
            print(
                f"{name:24} {row['p50_ms']:7.1f} {row['p99_ms']:8.1f} {row['probe_errors']:5d} "
                f"{row['instances_lost']:5d} {rss:>27} {('yes' if row['alive'] else 'NO'):>6}  {row['outcome']}",
                flush=True,
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--only", nargs="*", default=[], choices=sorted(ATTACKS))
    parser.add_argument(
        "--same-process",
        action="store_true",
        help="run each attack in the measuring process (as before: the attacker's CPU then delays the probe)",
    )
    parser.add_argument("--attack", choices=sorted(ATTACKS), help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.attack:
        trio.run(attack_alone, arguments.attack, arguments.target, arguments.seconds)
    else:
        trio.run(main, arguments.seconds, arguments.only, arguments.same_process)

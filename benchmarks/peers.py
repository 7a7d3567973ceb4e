"""spear_actors against Ray and tractor, and against the floors, in one run (issue 15).

    make bench-peers                                   # n=2000, 3 rounds: ~2-3 min
    .venv/bin/python benchmarks/peers.py --quick       # n=500, 3 rounds: ~1 min
    .venv/bin/python benchmarks/peers.py --n 5000 --rounds 5 --markdown

Systems, each set up once in its own process(es), then measured in interleaved rounds
(the order rotates every round, so the load of other work on the machine spreads over
all of them):

  * **Ray** 2.60 local actor, sync method: ``ray.get(actor.echo.remote(**payload))``;
    64 in flight = a window of 64 object refs kept full with ``ray.wait``;
  * **tractor** 0.1.0a5: ``portal.run(echo, **payload)`` to one sub-actor; 64 in flight
    = 64 trio tasks on the portal;
  * **spear** in-process ``node.invoke`` (in the node's own loop), and **spear tcp / ws
    invoke** from a client service in its own process (1 connection sequential, 8
    connections for 64 in flight); the echo function of examples/hello_agent.py in
    process agents (up to 4, 16 calls each, as benchmarks/invoke.py);
  * the **floor**: a raw trio-websocket echo plus a raw trio unix-socket echo (length +
    msgpack framing), client and server in separate processes; floor p50 = the sum.

Payload ``{"a": 1, "b": "x" * 32}``. Per system: p50/p99 of sequential calls, calls/s
with 64 in flight, CPU per call during the 64-in-flight phase read from /proc: *node*
= the process serving the call (spear's node, Ray's actor worker, tractor's sub-actor,
the echo server), *server* = every serving process (spear: node + agents; Ray: every
Ray process but the driver), *client* = the calling process. Ratios to Ray and to the
floor are taken within a round; the summary gives medians and [min-max] over rounds.

Ray and tractor are not project dependencies: they live in ``.venv-peers/`` (created on
first use; tractor 0.1.0a5 installed with ``--no-deps`` plus its own requirements and
its pinned trio 0.22). Without it (no registry), Ray and tractor are skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _peers_common import MARKER  # noqa: E402

VENV = ROOT / ".venv-peers"
VENV_PYTHON = VENV / "bin" / "python"
# What .venv-peers holds; changing a line here rebuilds it.
REQUIREMENTS = ["ray==2.60.0", "msgpack==1.2.4"]
TRACTOR = "tractor==0.1.0a5"
TRACTOR_REQUIREMENTS = [  # tractor 0.1.0a5's own, with the trio it was made for
    "trio==0.22.2",
    "async_generator==1.10",
    "trio_typing==0.10.0",
    "tricycle==0.3.0",
    "colorlog",
    "wrapt",
    "msgspec",
    "pdbpp",
]
IN_FLIGHT = 64
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class System:
    """One row of the table."""

    key: str
    label: str
    driver: str
    target: str | None = None
    rate: bool = True


SYSTEMS = [
    System("ray", "Ray 2.60 local actor, sync method", "ray"),
    System("tractor", "tractor 0.1.0a5 portal.run", "tractor"),
    System("inproc", "spear in-process node.invoke", "node"),
    System("tcp", "spear tcp invoke (client process)", "client", "tcp"),
    System("ws", "spear ws invoke (client process)", "client", "ws"),
    System("ws_echo", "floor part: raw trio ws echo", "floor", "ws"),
    System("unix_echo", "floor part: raw trio unix echo", "floor", "unix", rate=False),
]
FLOOR_LABEL = "floor = ws echo + unix echo (p50)"


# -- the virtualenv with Ray and tractor --------------------------------------------------
def ensure_peers_venv() -> str | None:
    """Create .venv-peers if needed; None when ready, else why it is not."""
    pins = "\n".join([*REQUIREMENTS, TRACTOR, *TRACTOR_REQUIREMENTS])
    stamp = VENV / (".installed-" + hashlib.sha256(pins.encode()).hexdigest()[:12])
    if stamp.exists():
        return None
    pip = [str(VENV_PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    steps = [
        [sys.executable, "-m", "venv", str(VENV)],
        [*pip, *REQUIREMENTS],
        [*pip, "--no-deps", TRACTOR],
        [*pip, *TRACTOR_REQUIREMENTS],
    ]
    print(f"setting up {VENV.name}/ (ray, tractor): a few minutes, once", flush=True)
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            return f"`{' '.join(step[-3:])}` failed: {done.stderr.strip().splitlines()[-1:]}"
    for old in VENV.glob(".installed-*"):
        old.unlink()
    stamp.touch()
    return None


# -- driver processes -------------------------------------------------------------------
class Driver:
    """A driver process (see _peers_common): commands in, marked JSON answers out."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log: IO[str] = open(self.log_path, "w")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=ROOT, env=env
        )
        self.info = self.answer()

    @property
    def pid(self) -> int:
        return self.process.pid

    def answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        while line := self.process.stdout.readline():
            if line.startswith(MARKER):
                return json.loads(line[len(MARKER) :])  # type: ignore[no-any-return]
        self.process.wait()
        tail = self.log_path.read_text().strip().splitlines()[-15:]
        raise RuntimeError(f"driver {self.name} exited ({self.process.returncode}):\n  " + "\n  ".join(tail))

    def request(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self.answer()

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.process.stdin.close()
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self.log.close()


# -- CPU from /proc ---------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """utime + stime of *pid*, all its threads (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_tree(roots: list[int]) -> set[int]:
    """*roots* and all their descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def measured(driver: Driver, command: dict[str, Any]) -> dict[str, Any]:
    """Run *command* and add CPU per call of the node, the serving side and the client."""
    info = driver.info
    server = process_tree(info["server_roots"]) - set(info["exclude"])
    pids = server | {info["node_pid"], driver.pid}
    before = {pid: cpu_seconds(pid) for pid in pids}
    result = driver.request(command)
    after = {pid: cpu_seconds(pid) for pid in pids}
    calls = result.get("calls") or 1
    used = {pid: max(0.0, after[pid] - before[pid]) for pid in pids}
    result["node_cpu"] = used[info["node_pid"]] / calls
    result["server_cpu"] = sum(used[pid] for pid in server) / calls
    result["client_cpu"] = None if driver.pid in server else used[driver.pid] / calls
    return result


# -- figures ----------------------------------------------------------------------------
@dataclass
class Round:
    """One round's figures per system key (``floor`` derived from the echo parts)."""

    figures: dict[str, dict[str, Any]] = field(default_factory=dict)

    def ratio(self, key: str, metric: str, base: str) -> float | None:
        mine, theirs = self.figures.get(key, {}).get(metric), self.figures.get(base, {}).get(metric)
        return mine / theirs if mine and theirs else None


COLUMNS: list[tuple[str, str, Callable[[Round, str], float | None], str]] = [
    ("p50 µs", "p50", lambda r, k: _scaled(r.figures.get(k, {}).get("p50"), 1e6), "{:,.0f}"),
    ("p99 µs", "p99", lambda r, k: _scaled(r.figures.get(k, {}).get("p99"), 1e6), "{:,.0f}"),
    (f"calls/s @{IN_FLIGHT}", "rate", lambda r, k: r.figures.get(k, {}).get("rate"), "{:,.0f}"),
    ("node CPU µs/call", "node_cpu", lambda r, k: _scaled(r.figures.get(k, {}).get("node_cpu"), 1e6), "{:,.0f}"),
    ("server CPU µs/call", "server_cpu", lambda r, k: _scaled(r.figures.get(k, {}).get("server_cpu"), 1e6), "{:,.0f}"),
    ("client CPU µs/call", "client_cpu", lambda r, k: _scaled(r.figures.get(k, {}).get("client_cpu"), 1e6), "{:,.0f}"),
    ("p50 / Ray", "", lambda r, k: r.ratio(k, "p50", "ray"), "{:.2f}x"),
    ("p50 / floor", "", lambda r, k: r.ratio(k, "p50", "floor"), "{:.2f}x"),
    ("calls/s / Ray", "", lambda r, k: r.ratio(k, "rate", "ray"), "{:.2f}x"),
    ("calls/s / tractor", "", lambda r, k: r.ratio(k, "rate", "tractor"), "{:.2f}x"),
]


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def cell(values: list[float | None], fmt: str, spread: bool) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "—"
    text = fmt.format(statistics.median(present))
    if spread and len(present) > 1:
        text += " [" + fmt.format(min(present)).rstrip("x") + "-" + fmt.format(max(present)) + "]"
    return text


def table(rounds: list[Round], rows: list[tuple[str, str]], markdown: bool) -> str:
    spread = len(rounds) > 1
    body = []
    for key, label in rows:
        body.append([label] + [cell([get(r, key) for r in rounds], fmt, spread) for _, _, get, fmt in COLUMNS])
    header = ["system"] + [name for name, *_ in COLUMNS]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * len(COLUMNS) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = []
    for row in [header, *body]:
        cells = [text.rjust(width) for text, width in zip(row, widths, strict=True)]
        cells[0] = row[0].ljust(widths[0])
        lines.append("  ".join(cells))
    return "\n".join(lines)


# -- the run ----------------------------------------------------------------------------
def start_drivers(needed: set[str], log_dir: Path) -> dict[str, Driver]:
    env = {**os.environ, "PYTHONPATH": str(HERE), "RAY_USAGE_STATS_ENABLED": "0", "PYTHONWARNINGS": "ignore"}
    argv = {
        "node": [sys.executable, str(HERE / "_peers_spear.py"), "node"],
        "floor": [sys.executable, str(HERE / "_peers_floor.py")],
        "ray": [str(VENV_PYTHON), str(HERE / "_peers_ray.py")],
        "tractor": [str(VENV_PYTHON), str(HERE / "_peers_tractor.py")],
    }
    drivers: dict[str, Driver] = {}
    try:
        for name in ("node", "floor", "tractor", "ray"):
            if name in needed or (name == "node" and "client" in needed):
                drivers[name] = Driver(name, argv[name], log_dir, env if name in ("ray", "tractor") else None)
                print(f"  {name} ready (node pid {drivers[name].info['node_pid']})", flush=True)
        if "client" in needed:
            node = drivers["node"].info
            client_argv = [sys.executable, str(HERE / "_peers_spear.py"), "client", node["ws"], node["tcp"]]
            drivers["client"] = Driver("client", [*client_argv, str(drivers["node"].pid)], log_dir)
            print("  spear client ready (8 ws + 8 tcp connections)", flush=True)
    except BaseException:
        stop_drivers(drivers)
        raise
    return drivers


def stop_drivers(drivers: dict[str, Driver]) -> None:
    for name in ("client", "floor", "tractor", "ray", "node"):
        if name in drivers:
            drivers.pop(name).stop()


def run_round(systems: list[System], drivers: dict[str, Driver], n: int, total: int) -> Round:
    result = Round()
    for system in systems:
        driver = drivers[system.driver]
        seq = measured(driver, {"op": "seq", "n": n, "target": system.target})
        figures: dict[str, Any] = {"p50": seq["p50"], "p99": seq["p99"]}
        if system.rate:
            rate = measured(driver, {"op": "rate", "total": total, "in_flight": IN_FLIGHT, "target": system.target})
            figures.update({key: rate[key] for key in ("rate", "node_cpu", "server_cpu", "client_cpu")})
        result.figures[system.key] = figures
    parts = [result.figures.get("ws_echo", {}).get("p50"), result.figures.get("unix_echo", {}).get("p50")]
    if all(parts):
        result.figures["floor"] = {"p50": sum(parts)}  # type: ignore[arg-type]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="n=500, 1,920 calls at 64 in flight (about a minute)")
    parser.add_argument("--n", type=int, help="sequential calls per system per round (default 2,000)")
    parser.add_argument("--total", type=int, help="calls per 64-in-flight measurement (default 6,400)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--systems", default=",".join(s.key for s in SYSTEMS), help="comma-separated subset")
    parser.add_argument("--markdown", action="store_true", help="print the summary as a markdown table too")
    parser.add_argument("--json", type=Path, help="write every round's figures here")
    args = parser.parse_args()
    quick = args.quick or bool(os.environ.get("BENCH_QUICK") or os.environ.get("SPEAR_BENCH_QUICK"))
    n = args.n or (500 if quick else 2000)
    total = args.total or (1920 if quick else 6400)
    wanted = set(args.systems.split(","))
    systems = [s for s in SYSTEMS if s.key in wanted]
    if unknown := wanted - {s.key for s in SYSTEMS}:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {[s.key for s in SYSTEMS]}")
    if any(s.driver in ("ray", "tractor") for s in systems) and (why := ensure_peers_venv()):
        print(f"Ray and tractor skipped: {VENV.name}/ could not be set up: {why}")
        systems = [s for s in systems if s.driver not in ("ray", "tractor")]

    log_dir = Path(tempfile.mkdtemp(prefix="spear-peers-logs-"))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus; n={n}, {total} calls at {IN_FLIGHT} in flight, ")
    print(f"{args.rounds} rounds; driver logs in {log_dir}\nstarting:", flush=True)
    started = time.perf_counter()
    drivers = start_drivers({s.driver for s in systems}, log_dir)
    rows = [(s.key, s.label) for s in systems]
    if any(s.key == "unix_echo" for s in systems) and any(s.key == "ws_echo" for s in systems):
        rows.append(("floor", FLOOR_LABEL))
    rounds: list[Round] = []
    try:
        for index in range(args.rounds):
            shift = index % len(systems)
            order = systems[shift:] + systems[:shift]
            rounds.append(run_round(order, drivers, n, total))
            print(f"\nround {index + 1} (order: {', '.join(s.key for s in order)})")
            print(table(rounds[-1:], rows, markdown=False), flush=True)
    finally:
        stop_drivers(drivers)
    print(f"\nsummary: median [min-max] of {len(rounds)} rounds ({time.perf_counter() - started:.0f} s)")
    print(table(rounds, rows, markdown=False))
    if args.markdown:
        print()
        print(table(rounds, rows, markdown=True))
    if args.json:
        args.json.write_text(json.dumps([r.figures for r in rounds], indent=1))


if __name__ == "__main__":
    main()

"""Shared fixtures: a node with fast timings, agent scripts, and a leak check."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from spear_actors.config import NodeConfig
from spear_actors.model import InstancePolicy
from spear_actors.node import Node, open_node
from spear_actors.policy import OperatorPolicy

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_AGENT = ROOT / "examples" / "hello_agent.py"
AGENTS = Path(__file__).resolve().parent / "agents"


def child_pids(parent: int | None = None) -> set[int]:
    """Processes (zombies included) whose parent is *parent* (default: this test
    process), from /proc."""
    me = os.getpid() if parent is None else parent
    children = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            children.add(int(entry))
    return children


def pids_with_env(marker: str) -> set[int]:
    """Live processes whose environment holds *marker* (finds orphans of any parent)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as environ:
                if marker.encode() in environ.read():
                    found.add(int(entry))
        except OSError:
            continue
    return found


def open_sockets() -> int:
    """How many sockets this process has open (from /proc/self/fd)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            continue
    return count


def live_tasks() -> set[object]:
    """Every trio task in this run (system tasks included), walking from the root."""
    import trio

    found: set[object] = set()
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        found.add(task)
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return found


@pytest.fixture
def no_leaked_processes() -> Iterator[None]:
    """Fail the test if it leaves a child or an agent process behind."""
    before = child_pids()
    yield
    leaked = child_pids() - before
    assert not leaked, f"child processes left behind: {sorted(leaked)}"


def fast_config(tmp_path: Path, **overrides: object) -> NodeConfig:
    """A node config with short timeouts for tests; clients may use artifacts under
    the repository and *tmp_path*, whatever the working directory."""
    config = NodeConfig(
        policy=OperatorPolicy(artifact_roots=[ROOT, tmp_path]),
        data_dir=tmp_path / "data",
        agent_listen=f"unix://{tmp_path}/agents.sock",
        start_timeout_s=10.0,
        stop_grace_s=1.0,
        agent_heartbeat_interval_s=0.5,
        agent_heartbeat_timeout_s=3.0,
        defaults=InstancePolicy(
            min_instances=0, max_instances=4, max_concurrency=1, idle_timeout_s=300.0, max_pending=1000
        ),
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


@pytest.fixture
async def node(tmp_path: Path, no_leaked_processes: None) -> AsyncIterator[Node]:
    async with open_node(fast_config(tmp_path, listen=["ws://127.0.0.1:0"])) as running:
        yield running


def agent_spec(path: Path = EXAMPLE_AGENT, **config: object) -> dict[str, object]:
    """An artifact_spec map for a Python agent script."""
    return {"location": str(path), "artifact_type": "process", "config": dict(config)}


def python() -> str:
    return sys.executable


async def until_running(node: Node, execution_id: str) -> None:
    """Wait (polling the node, at most 10 s) until the execution is RUNNING."""
    import trio

    from spear_actors import SpearError

    with trio.fail_after(10):
        while True:
            try:
                if (await node.get_execution(execution_id))["status"] == "RUNNING":
                    return
            except SpearError:
                pass  # not registered yet
            await trio.sleep(0.01)

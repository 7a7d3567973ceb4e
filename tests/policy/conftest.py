"""Fixtures for the policy tests: a node under a chosen policy, and a client of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest
import trio

import spear_actors
from spear_actors.client import Client
from spear_actors.node import Node, open_node
from spear_actors.policy import OperatorPolicy

from ..artifacts.artifact_helpers import ArtifactServer
from ..conftest import fast_config

PROBE = Path(__file__).resolve().parent / "agents" / "probe_agent.py"
"""An agent that reports its environment, limits and identity, and misbehaves on demand."""

NodeAndClient = tuple[Node, Client]
PolicyNode = Callable[..., AbstractAsyncContextManager[NodeAndClient]]


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    """The one artifact root of :func:`policy_node` nodes, besides this test directory."""
    root = tmp_path / "allowed"
    root.mkdir()
    return root


@pytest.fixture
def policy_node(tmp_path: Path, allowed: Path, no_leaked_processes: None) -> PolicyNode:
    """``async with policy_node(**policy_fields) as (node, client)``: a node listening
    on loopback websocket under ``OperatorPolicy(**policy_fields)`` (artifact roots
    default to *allowed* and the probe agent's directory) and a client connected to it."""

    @asynccontextmanager
    async def start(config: dict[str, object] | None = None, **fields: object) -> AsyncIterator[NodeAndClient]:
        fields.setdefault("artifact_roots", [allowed, PROBE.parent])
        node_config = fast_config(tmp_path, listen=["ws://127.0.0.1:0"], policy=OperatorPolicy(**fields))  # type: ignore[arg-type]
        for key, value in (config or {}).items():
            setattr(node_config, key, value)
        async with open_node(node_config) as node, spear_actors.connect(str(node.endpoints[0])) as client:
            yield node, client

    return start


def probe_spec(**config: object) -> dict[str, object]:
    """An artifact_spec for the probe agent."""
    return {"location": str(PROBE), "config": dict(config)}


@pytest.fixture
async def server(nursery: trio.Nursery) -> ArtifactServer:
    """An artifact server on 127.0.0.1 (port 0), stopped with the test's nursery."""
    running = ArtifactServer()
    await nursery.start(running.run)
    return running


def alive(pid: int) -> bool:
    """Whether *pid* runs (a zombie waiting for init counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def wait_gone(pids: list[int], seconds: float = 20) -> None:
    """Wait (real time, generous) until none of *pids* runs."""
    with trio.fail_after(seconds):
        while any(alive(pid) for pid in pids):
            await trio.sleep(0.05)

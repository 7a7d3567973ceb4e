"""Helpers of the external-mode tests: nodes that allow external tasks, agents
dialling in (an in-process one speaking the protocol, or a real agent process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from spear_actors.config import NodeConfig
from spear_actors.errors import ErrorCode, SpearError
from spear_actors.node import Node
from spear_actors.policy import OperatorPolicy
from spear_actors.protocol.connection import Connection
from spear_actors.protocol.handshake import open_connection
from spear_actors.protocol.messages import Hello
from spear_actors.protocol.serving import IncomingRequest
from spear_actors.protocol.transports import open_transport

from ..conftest import EXAMPLE_AGENT, ROOT, fast_config

EXTERNAL = {"artifact_type": "external", "location": "runs elsewhere"}


def external_config(tmp_path: Path, **overrides: Any) -> NodeConfig:
    """A fast node config whose policy lets clients create external tasks."""
    policy = OperatorPolicy(artifact_roots=[ROOT, tmp_path], runtimes=["process", "wasm", "external"])
    for name in ("external_secret_ttl_s", "external_secret_max_ttl_s", "external_max_secrets_per_task"):
        if name in overrides:
            setattr(policy, name, overrides.pop(name))
    return fast_config(tmp_path, policy=policy, store="memory", **overrides)


async def task_id_of(node: Node, name: str) -> str:
    """The id of the task called *name*."""
    [task] = [task for task in (await node.list_tasks(prefix=name))["tasks"] if task["task_name"] == name]
    task_id: str = task["task_id"]
    return task_id


async def instances(node: Node, task: str) -> list[dict[str, Any]]:
    """The instances of the task called *task*, as get_task lists them."""
    info = await node.get_task(await task_id_of(node, task))
    found: list[dict[str, Any]] = info["instances"]
    return found


async def until_instances(node: Node, task: str, *statuses: str, timeout: float = 20.0) -> None:
    """Wait (polling the API) until the task's instances have exactly *statuses* (any order)."""
    with trio.fail_after(timeout):
        while sorted(i["status"] for i in await instances(node, task)) != sorted(statuses):
            await trio.sleep(0.02)


async def _calculator(request: IncomingRequest) -> Any:
    """An in-process agent's functions: add, count (streams), sleep."""
    params = request.params
    function, args = params["function"], params["params"]
    if function == "add":
        return {"value": args[0] + args[1], "logs": ["adding"]}
    if function == "count":
        for n in range(args[0]):
            await request.send_item(n)
        return {"value": {"counted": args[0]}, "logs": []}
    if function == "sleep":
        await trio.sleep(args[0])
        return {"value": {"slept": args[0]}, "logs": []}
    raise SpearError(ErrorCode.NOT_FOUND, f"function {function!r} is not registered")


@asynccontextmanager
async def dialled_agent(address: str, secret: str) -> AsyncIterator[Connection]:
    """An agent in this process that dials *address* with *secret* and serves
    :func:`_calculator`; the node's refusal is raised as SpearError."""
    async with (
        open_transport(address) as transport,
        open_connection(transport, Hello(role="agent", auth=secret, peer_id="in-process"), handler=_calculator) as link,
    ):
        yield link


def agent_environment(env: Mapping[str, str]) -> dict[str, str]:
    """What a remote agent process gets: the lines `spear agent-secret` printed, and
    enough of this environment to run Python."""
    keep = {name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ}
    return {**keep, "PYTHONPATH": str(ROOT), **env}


@asynccontextmanager
async def agent_process(env: Mapping[str, str], script: Path = EXAMPLE_AGENT) -> AsyncIterator[trio.Process]:
    """The agent *script* as a real process with *env* (started here, as an operator
    would start it elsewhere); killed and reaped on exit if still running."""
    process = await trio.lowlevel.open_process(
        [sys.executable, str(script)],
        env=agent_environment(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
        with trio.CancelScope(shield=True):
            await process.wait()

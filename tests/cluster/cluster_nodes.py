"""Real nodes in a cluster for the routing tests: in-process ``open_node`` instances
on loopback, each with its own data dir, all registered in one etcd."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from spear_actors import connect
from spear_actors.node import Node, open_node

from ..conftest import ROOT, fast_config
from ..node_process import ServedNode, spear_serve
from .cluster_helpers import cluster_config, eventually


def node_config(tmp_path: Path, node_id: str, etcd_url: str, prefix: str, **overrides: object) -> Any:
    """A fast node config for *node_id*, in the cluster at *etcd_url* / *prefix*."""
    root = tmp_path / node_id
    root.mkdir(exist_ok=True)
    config = fast_config(root, listen=["ws://127.0.0.1:0"], node_id=node_id, store="memory")
    config.cluster = cluster_config(etcd_url, prefix, token="cluster-secret")
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


async def cluster_health(url: str) -> dict[str, Any]:
    async with connect(url) as client:
        health: dict[str, Any] = await client.get_health(scope="cluster")
        return health


@asynccontextmanager
async def open_cluster(
    tmp_path: Path, etcd_url: str, prefix: str, names: list[str], overrides: dict[str, dict[str, Any]] | None = None
) -> AsyncIterator[list[Node]]:
    """Nodes *names* (with config *overrides* by name), yielded once every one of
    them sees all the others."""
    overrides = overrides or {}
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                open_node(node_config(tmp_path, n, etcd_url, prefix, **overrides.get(n, {})))
            )
            for n in names
        ]
        for node in nodes:
            await eventually(
                lambda node=node: cluster_health(url_of(node)),  # type: ignore[misc]
                lambda health: {n["node_id"] for n in health["nodes"]} == set(names),
            )
        yield nodes


def url_of(node: Node) -> str:
    return str(node.endpoints[0])


def served_config(tmp_path: Path, node_id: str, etcd_url: str, prefix: str) -> str:
    """The config file of a ``spear serve`` node *node_id* in the cluster at *etcd_url* / *prefix*."""
    return f"""
node_id = "{node_id}"
listen = ["ws://127.0.0.1:0"]
store = "memory"
agent_listen = "unix://{tmp_path}/agents.sock"

[policy]
artifact_roots = ["{ROOT}"]

[cluster]
endpoints = ["{etcd_url}"]
prefix = "{prefix}"
lease_ttl_s = 2
token = "cluster-secret"
request_timeout_s = 1.0
retry_interval_s = 0.1
load_publish_interval_s = 0.1
"""


@asynccontextmanager
async def served_member(
    tmp_path: Path, node_id: str, etcd_url: str, prefix: str, *, seen_by: Node
) -> AsyncIterator[ServedNode]:
    """A ``spear serve`` process *node_id* in the cluster (stopped when the block ends),
    yielded once *seen_by* lists it among the cluster's nodes."""
    served_dir = tmp_path / "served"
    served_dir.mkdir()
    async with spear_serve(served_dir, served_config(served_dir, node_id, etcd_url, prefix)) as served:
        await eventually(
            lambda: cluster_health(url_of(seen_by)), lambda h: node_id in {n["node_id"] for n in h["nodes"]}
        )
        yield served

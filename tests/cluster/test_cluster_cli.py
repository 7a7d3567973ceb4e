"""``spear nodes`` and ``spear tasks --cluster`` against a real two-node cluster."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

from spear_actors import connect
from spear_actors.node import Node

from ..conftest import agent_spec
from .cluster_nodes import open_cluster, url_of
from .etcd_server import EtcdServer

SPEAR = [sys.executable, "-m", "spear_actors.cli"]


async def _spear(*args: str) -> tuple[int, str, str]:
    done = await trio.run_process([*SPEAR, *args], capture_stdout=True, capture_stderr=True, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_nodes_and_cluster_tasks(etcd: EtcdServer, prefix: str, tmp_path: Path) -> None:
    async with open_cluster(tmp_path, etcd.url, prefix, ["node-a", "node-b"]) as (a, b):
        async with connect(url_of(a)) as on_a:
            await on_a.invoke("add", [1, 2], task_name="listed", artifact_spec=agent_spec())
        code, out, err = await _spear("nodes", "--url", url_of(b), "--json")
        assert code == 0, err
        nodes = json.loads(out)
        assert nodes["cluster_state"] == "connected"
        assert sorted(n["node_id"] for n in nodes["nodes"]) == ["node-a", "node-b"]
        code, out, err = await _spear("tasks", "--cluster", "--url", url_of(b), "--json")
        assert code == 0, err
        assert [(t["task_name"], t["owner"]) for t in json.loads(out)["tasks"]] == [("listed", "node-a")]
        code, out, err = await _spear("tasks", "--cluster", "--url", url_of(b))
        assert code == 0 and "listed" in out and "node-a" in out, err


async def test_nodes_on_a_lone_node_is_failed_precondition(node: Node) -> None:
    code, _out, err = await _spear("nodes", "--url", url_of(node))
    assert code == 1 and err.startswith("FAILED_PRECONDITION"), err

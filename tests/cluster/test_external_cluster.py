"""An external agent of a task owned by another node: the secret is asked of any node,
issued by the owner, and the agent dialling the owner's websocket listener serves
calls made through any node (issue 17)."""

from __future__ import annotations

from pathlib import Path

from spear_actors import connect
from spear_actors.policy import OperatorPolicy

from ..conftest import ROOT
from ..runtimes.external_helpers import EXTERNAL, agent_process
from .cluster_nodes import open_cluster, url_of
from .etcd_server import EtcdServer


async def test_a_secret_asked_of_any_node_lets_an_agent_serve_the_owners_task(
    etcd: EtcdServer, prefix: str, tmp_path: Path, no_leaked_processes: None
) -> None:
    policy = OperatorPolicy(artifact_roots=[ROOT, tmp_path], runtimes=["process", "wasm", "external"])
    overrides = {
        "node-a": {"policy": policy, "agent_listen": "ws://127.0.0.1:0"},
        "node-b": {"policy": policy},
    }
    async with (
        open_cluster(tmp_path, etcd.url, prefix, ["node-a", "node-b"], overrides) as (a, b),
        connect(url_of(a)) as on_a,
        connect(url_of(b)) as on_b,
    ):
        created = await on_a.invoke("add", [1, 2], task_name="sensor", artifact_spec=EXTERNAL, execution_mode="ASYNC")
        issued = await on_b.issue_agent_secret("sensor")
        assert issued["task_id"] == created["task_id"]
        assert a.agent_secrets is not None and issued["agent_addr"] == a.agent_secrets.agent_address
        assert issued["agent_addr"].startswith("ws://127.0.0.1:")
        async with agent_process(issued["env"]):
            first = await on_b.wait_execution(created["execution_id"], timeout=30)
            assert (first["status"], first["result"]) == ("COMPLETED", 3)
            assert (await on_b.invoke("add", [20, 22], task_name="sensor"))["result"] == 42
            async with on_b.stream("count", [3], task_name="sensor") as items:
                assert [item async for item in items] == [0, 1, 2]
        assert (await b.list_tasks())["tasks"] == []  # everything ran on A

"""Calls routed through any node of a real three-node cluster on a real etcd."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from spear_actors import SpearError, connect
from spear_actors.cluster import id_owner
from spear_actors.config import NodeConfig, TaskDeclaration
from spear_actors.errors import ErrorCode
from spear_actors.model import ArtifactSpec
from spear_actors.node import open_node

from ..conftest import agent_spec
from .cluster_helpers import eventually
from .cluster_nodes import open_cluster, url_of
from .etcd_server import EtcdServer


async def test_task_created_on_a_is_served_through_c_in_every_mode(
    etcd: EtcdServer, prefix: str, tmp_path: Path
) -> None:
    async with open_cluster(tmp_path, etcd.url, prefix, ["node-a", "node-b", "node-c"]) as (a, _b, c):
        async with connect(url_of(a)) as on_a:
            created = await on_a.invoke("add", [1, 2], task_name="calc", artifact_spec=agent_spec())
        assert created["result"] == 3
        task_id = created["task_id"]
        assert id_owner(task_id) == "node-a"
        assert id_owner(created["execution_id"]) == "node-a"
        async with connect(url_of(c)) as on_c:
            # SYNC, by id and by name
            by_id = await on_c.invoke("add", [2, 3], task_id=task_id)
            assert by_id["result"] == 5 and id_owner(by_id["execution_id"]) == "node-a"
            by_name = await on_c.invoke("add", [4, 5], task_name="calc")
            assert by_name["result"] == 9 and by_name["task_id"] == task_id
            # ASYNC, then status and wait through C
            accepted = await on_c.invoke("add", [3, 4], task_id=task_id, execution_mode="ASYNC")
            record = await on_c.wait_execution(accepted["execution_id"])
            assert record["status"] == "COMPLETED" and record["result"] == 7
            # STREAM: items pass through with credit
            async with on_c.stream("count", 5, task_id=task_id, window=2) as items:
                received = [item async for item in items]
            assert received == [0, 1, 2, 3, 4]
            assert items.result["result"] == {"counted": 5}
            # the task itself, and the cluster's listing with its owner
            task = await on_c.get_task(task_id)
            assert task["task_name"] == "calc"
            listing = await on_c.list_tasks(scope="cluster")
            assert [(t["task_name"], t["owner"]) for t in listing["tasks"]] == [("calc", "node-a")]
        # C runs no task of its own: everything ran on A
        assert (await c.list_tasks())["tasks"] == []


async def test_cancel_and_status_through_a_third_node(etcd: EtcdServer, prefix: str, tmp_path: Path) -> None:
    async with (
        open_cluster(tmp_path, etcd.url, prefix, ["node-a", "node-b", "node-c"]) as (a, b, c),
        connect(url_of(a)) as on_a,
        connect(url_of(b)) as on_b,
        connect(url_of(c)) as on_c,
    ):
        accepted = await on_a.invoke(
            "sleep", [30], task_name="sleeper", artifact_spec=agent_spec(), execution_mode="ASYNC"
        )
        execution_id = accepted["execution_id"]
        await eventually(lambda: on_b.get_execution(execution_id), lambda r: r["status"] == "RUNNING")
        async with on_c.watch_executions([execution_id]) as notices:
            cancelled = await on_b.cancel_execution(execution_id, reason="stop it")
            assert cancelled["status"] == "CANCELLED"
            notice = [item async for item in notices]
        assert [n["status"] for n in notice] == ["CANCELLED"]
        assert (await on_c.get_execution(execution_id))["status"] == "CANCELLED"


async def test_two_nodes_racing_for_one_name_create_it_once(etcd: EtcdServer, prefix: str, tmp_path: Path) -> None:
    async with open_cluster(tmp_path, etcd.url, prefix, ["node-a", "node-b", "node-c"]) as nodes:
        for round_ in range(3):
            answers: list[dict[str, object]] = []

            async def call(node_index: int, name: str, answers: list[dict[str, object]] = answers) -> None:
                async with connect(url_of(nodes[node_index])) as client:
                    answers.append(await client.invoke("add", [1, 1], task_name=name, artifact_spec=agent_spec()))

            async with trio.open_nursery() as nursery:
                for index in (0, 1, 2):
                    nursery.start_soon(call, index, f"race-{round_}")
            assert len({answer["task_id"] for answer in answers}) == 1
            counts = [len((await node.list_tasks())["tasks"]) for node in nodes]
            assert sum(counts) == round_ + 1  # each name made on exactly one node


async def test_lost_owner_and_unknown_ids(etcd: EtcdServer, prefix: str, tmp_path: Path) -> None:
    async with (
        open_cluster(tmp_path, etcd.url, prefix, ["node-a", "node-b"]) as (a, _b),
        connect(url_of(a)) as on_a,
    ):
        with pytest.raises(SpearError) as lost:
            await on_a.get_execution("node-gone:exec-0123")
        assert lost.value.code is ErrorCode.UNAVAILABLE and lost.value.details["lost_owner"] == "node-gone"
        with pytest.raises(SpearError) as lost_task:
            await on_a.invoke("add", [1, 2], task_id="node-gone:task-0123")
        assert lost_task.value.code is ErrorCode.UNAVAILABLE and "node-gone" in lost_task.value.message
        health = await on_a.get_health()
        assert health["cluster"]["state"] == "connected"
        with pytest.raises(SpearError) as bad_scope:
            await on_a.list_tasks(scope="galaxy")
        assert bad_scope.value.code is ErrorCode.INVALID_ARGUMENT


async def test_cancelling_or_timing_out_a_forwarded_call_ends_it_at_the_owner(
    etcd: EtcdServer, prefix: str, tmp_path: Path
) -> None:
    async with (
        open_cluster(tmp_path, etcd.url, prefix, ["node-a", "node-c"]) as (a, c),
        connect(url_of(a)) as on_a,
        connect(url_of(c)) as on_c,
    ):
        made = await on_a.invoke("add", [1, 2], task_name="slow", artifact_spec=agent_spec())

        async def running() -> list[dict[str, object]]:
            page = await a.list_executions(task_id=made["task_id"], status_filter=["RUNNING"])
            return list(page["executions"])

        # the client goes away: the forwarded call is cancelled at the owner
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: on_c.invoke("sleep", [30], task_id=made["task_id"]))
            [execution] = await eventually(running, lambda rows: len(rows) == 1)
            nursery.cancel_scope.cancel()
        record = await eventually(
            lambda: a.get_execution(str(execution["execution_id"])), lambda r: r["status"] != "RUNNING"
        )
        assert record["status"] == "CANCELLED"
        # the client's deadline travels with the call
        with pytest.raises(SpearError) as late:
            await on_c.call(
                "invoke",
                {
                    "task_id": made["task_id"],
                    "function_name": "sleep",
                    "parameters": [30],
                    "invocation_type": "EXISTING_TASK",
                },
                timeout=1.0,
            )
        assert late.value.code is ErrorCode.DEADLINE_EXCEEDED
        await eventually(running, lambda rows: rows == [])


async def test_a_full_node_places_a_new_task_on_the_least_loaded_one(
    etcd: EtcdServer, prefix: str, tmp_path: Path
) -> None:
    configs = {"node-full": {"max_running_executions": 0}}
    async with open_cluster(tmp_path, etcd.url, prefix, ["node-full", "node-b"], configs) as (full, b):
        async with connect(url_of(full)) as on_full:
            made = await on_full.invoke("add", [1, 2], task_name="placed", artifact_spec=agent_spec())
        assert made["result"] == 3 and id_owner(made["task_id"]) == "node-b"
        assert (await full.list_tasks())["tasks"] == []
        assert [t["task_name"] for t in (await b.list_tasks())["tasks"]] == ["placed"]


async def test_watch_of_executions_on_two_nodes_and_a_lost_one(etcd: EtcdServer, prefix: str, tmp_path: Path) -> None:
    async with (
        open_cluster(tmp_path, etcd.url, prefix, ["node-a", "node-b"]) as (a, b),
        connect(url_of(a)) as on_a,
        connect(url_of(b)) as on_b,
    ):
        on_a_id = (
            await on_a.invoke("sleep", [0.3], task_name="wa", artifact_spec=agent_spec(), execution_mode="ASYNC")
        )["execution_id"]
        on_b_id = (
            await on_b.invoke("sleep", [0.3], task_name="wb", artifact_spec=agent_spec(), execution_mode="ASYNC")
        )["execution_id"]
        assert (id_owner(on_a_id), id_owner(on_b_id)) == ("node-a", "node-b")
        async with on_b.watch_executions([on_a_id, on_b_id]) as notices:
            records = [item async for item in notices]
        assert sorted(r["execution_id"] for r in records) == sorted([on_a_id, on_b_id])
        assert {r["status"] for r in records} == {"COMPLETED"}
        assert notices.result == {"count": 2}
        with pytest.raises(SpearError) as lost:
            async with on_b.watch_executions([on_a_id, "node-gone:exec-1"]) as notices:
                [item async for item in notices]
        assert lost.value.code is ErrorCode.UNAVAILABLE


async def test_cluster_config_in_the_node_config(tmp_path: Path) -> None:
    config = NodeConfig.from_dict(
        {"listen": "ws://127.0.0.1:0", "cluster": {"endpoints": "http://127.0.0.1:2379", "lease_ttl_s": 5}}
    )
    assert config.cluster is not None and config.cluster.endpoints == ["http://127.0.0.1:2379"]
    assert config.cluster.lease_ttl_s == 5
    with pytest.raises(SpearError) as unknown:
        NodeConfig.from_dict({"cluster": {"endpoints": "http://127.0.0.1:2379", "ttl": 5}})
    assert unknown.value.code is ErrorCode.INVALID_ARGUMENT
    with pytest.raises(SpearError) as not_a_table:
        NodeConfig.from_dict({"cluster": "http://127.0.0.1:2379"})
    assert not_a_table.value.code is ErrorCode.INVALID_ARGUMENT
    alone = NodeConfig.from_dict({"cluster": {"endpoints": ["http://127.0.0.1:2379"]}}, base=tmp_path)
    with pytest.raises(SpearError) as no_listen:
        async with open_node(alone):
            pass
    assert no_listen.value.code is ErrorCode.INVALID_ARGUMENT and "listen" in no_listen.value.message


async def test_a_task_declared_in_a_nodes_config_is_reached_by_name_from_another(
    etcd: EtcdServer, prefix: str, tmp_path: Path
) -> None:
    spec = agent_spec()
    declared = TaskDeclaration(
        name="declared",
        artifact=ArtifactSpec(location=str(spec["location"]), artifact_type="process"),
    )
    configs = {"node-a": {"tasks": [declared]}}
    async with (
        open_cluster(tmp_path, etcd.url, prefix, ["node-a", "node-b"], configs) as (a, b),
        connect(url_of(b)) as on_b,
    ):
        [local] = (await a.list_tasks())["tasks"]
        await eventually(
            lambda: on_b.list_tasks(scope="cluster"),
            lambda page: [(t["task_name"], t["owner"]) for t in page["tasks"]] == [("declared", "node-a")],
        )
        answer = await on_b.invoke("add", [2, 2], task_name="declared")  # no artifact: it exists on a
        assert answer["result"] == 4 and answer["task_id"] == local["task_id"]
        assert (await b.list_tasks())["tasks"] == []

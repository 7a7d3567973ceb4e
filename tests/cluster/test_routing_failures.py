"""A cluster losing an owner node (kill -9 of a real ``spear serve``) and losing etcd."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio

from spear_actors import SpearError, connect
from spear_actors.cluster import id_owner
from spear_actors.errors import ErrorCode
from spear_actors.node import open_node
from spear_actors.protocol.handshake import open_connection
from spear_actors.protocol.messages import Hello
from spear_actors.protocol.transports import open_transport

from ..conftest import agent_spec
from .cluster_helpers import eventually
from .cluster_nodes import node_config, open_cluster, served_member, url_of
from .etcd_server import EtcdServer


async def test_owner_killed_then_next_new_task_recreates_it_on_a_live_node(
    etcd: EtcdServer, prefix: str, tmp_path: Path
) -> None:
    async with (
        open_cluster(tmp_path, etcd.url, prefix, ["node-b", "node-c"]) as (b, _c),
        served_member(tmp_path, "node-k", etcd.url, prefix, seen_by=b) as served,
        connect(url_of(b)) as on_b,
    ):
        async with connect(served.url) as on_k:
            made = await on_k.invoke("add", [1, 2], task_name="phoenix", artifact_spec=agent_spec())
        assert id_owner(made["task_id"]) == "node-k"
        await eventually(
            lambda: on_b.list_tasks(scope="cluster"), lambda page: [t["owner"] for t in page["tasks"]] == ["node-k"]
        )
        assert (await on_b.invoke("add", [2, 2], task_name="phoenix"))["result"] == 4  # forwarded to k

        served.process.kill()  # kill -9: no goodbye, the lease has to expire
        await served.process.wait()

        # the old id: UNAVAILABLE naming the lost owner (whether or not its lease ran out yet)
        with pytest.raises(SpearError) as lost:
            await on_b.invoke("add", [1, 1], task_id=made["task_id"])
        assert lost.value.code is ErrorCode.UNAVAILABLE and "node-k" in lost.value.message

        # the next NEW_TASK call, once the lease has expired, makes it again on a live node
        async def new_task() -> dict[str, object]:
            answer: dict[str, object] = await on_b.invoke(
                "add", [5, 5], task_name="phoenix", artifact_spec=agent_spec()
            )
            return answer

        again = await eventually(new_task, lambda answer: answer["result"] == 10)
        assert id_owner(str(again["task_id"])) in {"node-b", "node-c"}
        assert again["task_id"] != made["task_id"]


async def test_etcd_lost_and_back_while_calls_run(own_etcd: EtcdServer, prefix: str, tmp_path: Path) -> None:
    async with (
        open_cluster(tmp_path, own_etcd.url, prefix, ["node-a", "node-b"]) as (a, b),
        connect(url_of(a)) as on_a,
        connect(url_of(b)) as on_b,
    ):
        made = await on_a.invoke("add", [1, 2], task_name="steady", artifact_spec=agent_spec())
        await eventually(lambda: on_b.list_tasks(scope="cluster"), lambda page: len(page["tasks"]) == 1)
        served = 0

        async def keep_calling(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            nonlocal served
            task_status.started()
            while True:
                assert (await on_a.invoke("add", [served, 1], task_name="steady"))["result"] == served + 1
                assert (await on_b.invoke("add", [1, 1], task_id=made["task_id"]))["result"] == 2  # via a's gateway
                served += 1
                await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            await nursery.start(keep_calling)
            await own_etcd.astop()
            await eventually(on_a.get_health, lambda h: h["cluster"]["state"] == "lost")
            before = served
            await eventually(lambda: trio.sleep(0), lambda _: served >= before + 3)  # still serving its task
            with pytest.raises(SpearError) as refused:
                await on_a.invoke("add", [1, 2], task_name="brand-new", artifact_spec=agent_spec())
            assert refused.value.code is ErrorCode.UNAVAILABLE  # no new claims without etcd
            await own_etcd.astart()
            await eventually(on_a.get_health, lambda h: h["cluster"]["state"] == "connected")
            await eventually(on_b.get_health, lambda h: h["cluster"]["state"] == "connected")
            before = served
            await eventually(lambda: trio.sleep(0), lambda _: served >= before + 3)
            nursery.cancel_scope.cancel()
        fresh = await eventually(
            lambda: on_a.invoke("add", [2, 2], task_name="brand-new", artifact_spec=agent_spec()),
            lambda answer: answer["result"] == 4,
        )
        assert id_owner(fresh["task_id"]) == "node-a"


async def test_a_node_started_without_etcd_serves_and_joins_when_etcd_comes(
    own_etcd: EtcdServer, prefix: str, tmp_path: Path
) -> None:
    await own_etcd.astop()
    async with (
        open_node(node_config(tmp_path, "node-early", own_etcd.url, prefix)) as node,
        connect(url_of(node)) as client,
    ):
        health = await client.get_health()
        assert health["cluster"]["state"] in ("connecting", "lost")
        # a new name needs a claim, so etcd
        with pytest.raises(SpearError) as refused:
            await client.invoke("add", [1, 2], task_name="early", artifact_spec=agent_spec())
        assert refused.value.code is ErrorCode.UNAVAILABLE
        await own_etcd.astart()
        await eventually(client.get_health, lambda h: h["cluster"]["state"] == "connected")
        made = await eventually(
            lambda: client.invoke("add", [1, 2], task_name="early", artifact_spec=agent_spec()),
            lambda answer: answer["result"] == 3,
        )
        assert id_owner(made["task_id"]) == "node-early"


async def test_peers_prove_the_cluster_token_and_clients_cannot_pose_as_nodes(
    etcd: EtcdServer, prefix: str, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                open_node(node_config(tmp_path, name, etcd.url, prefix, token="client-secret"))
            )
            for name in ("node-a", "node-b")
        ]
        a, b = nodes
        on_a = await stack.enter_async_context(connect(url_of(a), token="client-secret"))
        on_b = await stack.enter_async_context(connect(url_of(b), token="client-secret"))
        await eventually(
            lambda: on_b.get_health(scope="cluster"),
            lambda h: {n["node_id"] for n in h["nodes"]} == {"node-a", "node-b"},
        )
        made = await on_a.invoke("add", [1, 2], task_name="guarded", artifact_spec=agent_spec())
        assert (await on_b.invoke("add", [3, 4], task_id=made["task_id"]))["result"] == 7  # b -> a, cluster token
        # a client that knows the client token but says it is a node is refused
        with pytest.raises(SpearError) as posing:
            async with (
                open_transport(url_of(a)) as transport,
                open_connection(transport, Hello(role="node", peer_id="node-x", auth="client-secret")),
            ):
                pass
        assert posing.value.code is ErrorCode.UNAUTHENTICATED

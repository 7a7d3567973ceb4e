"""The registry when etcd goes away and comes back (a real etcd, stopped and restarted)."""

from __future__ import annotations

import pytest
import trio

from spear_actors import ErrorCode, SpearError
from spear_actors.cluster import ClusterRegistry, ClusterState, open_registry
from tests.conftest import live_tasks, open_sockets

from .cluster_helpers import WAIT_S, cluster_config, eventually, node_info
from .etcd_server import EtcdServer


def _status_of(registry: ClusterRegistry):  # type: ignore[no-untyped-def]
    async def probe():  # type: ignore[no-untyped-def]
        return registry.status()

    return probe


async def test_etcd_restart_lost_then_connected_again(own_etcd: EtcdServer) -> None:
    config = cluster_config(own_etcd.url, "/outage/")
    async with open_registry(config, node_info("survivor")) as registry:
        await registry.claim_task("kept", "kept-id")
        await registry.claim_task("dropped", "dropped-id")

        await own_etcd.astop()
        lost = await eventually(_status_of(registry), lambda s: s.state is ClusterState.LOST)
        assert lost.last_error and lost.to_dict()["state"] == "lost"
        # No new names without etcd; what the node owns it still knows.
        with pytest.raises(SpearError) as refused:
            await registry.claim_task("new", "new-id")
        assert refused.value.code is ErrorCode.UNAVAILABLE
        assert refused.value.details["cluster_state"] == "lost"
        with pytest.raises(SpearError) as lookup:
            await registry.get_task("kept")
        assert lookup.value.code is ErrorCode.UNAVAILABLE
        assert sorted(e.task_name for e in registry.owned_tasks()) == ["dropped", "kept"]
        assert await registry.release_task("dropped")  # queued until etcd returns

        await own_etcd.astart()
        back = await eventually(_status_of(registry), lambda s: s.state is ClusterState.CONNECTED)
        assert back.since > lost.since
        node = await registry.get_node("survivor")
        assert node is not None and node.lease == back.lease
        kept = await registry.get_task("kept")
        assert kept is not None and kept.owner == "survivor" and kept.lease == back.lease
        await eventually(lambda: registry.get_task("dropped"), lambda entry: entry is None)
        assert (await registry.claim_task("new", "new-id")).won


async def test_etcd_replaced_by_an_empty_one_the_node_registers_again(own_etcd: EtcdServer) -> None:
    config = cluster_config(own_etcd.url, "/outage/")
    async with open_registry(config, node_info("survivor")) as registry:
        await registry.claim_task("kept", "kept-id")
        first_lease = registry.status().lease

        await own_etcd.astop()
        await eventually(_status_of(registry), lambda s: s.state is ClusterState.LOST)
        own_etcd.wipe()  # a brand-new etcd at the same address: every lease is gone
        await own_etcd.astart()

        back = await eventually(
            _status_of(registry), lambda s: s.state is ClusterState.CONNECTED and s.registrations == 2
        )
        assert back.lease != first_lease
        assert [n.node_id for n in await registry.list_nodes()] == ["survivor"]
        kept = await registry.get_task_by_id("kept-id")
        assert kept is not None and kept.task_name == "kept" and kept.lease == back.lease


async def test_a_node_started_while_etcd_is_down_joins_when_it_comes(own_etcd: EtcdServer) -> None:
    config = cluster_config(own_etcd.url, "/outage/")
    await own_etcd.astop()
    async with open_registry(config, node_info("early")) as registry:
        assert registry.state is ClusterState.CONNECTING
        assert registry.status().last_error
        with pytest.raises(SpearError) as refused:
            await registry.claim_task("t", "t-id")
        assert refused.value.code is ErrorCode.UNAVAILABLE
        await own_etcd.astart()
        await eventually(_status_of(registry), lambda s: s.state is ClusterState.CONNECTED)
        assert [n.node_id for n in await registry.list_nodes()] == ["early"]


async def test_leaving_without_etcd_ends_and_leaves_nothing(own_etcd: EtcdServer) -> None:
    sockets, tasks = open_sockets(), live_tasks()
    with trio.fail_after(WAIT_S):  # bounded by the request timeout, not by etcd
        async with open_registry(cluster_config(own_etcd.url, "/outage/"), node_info("n")) as registry:
            await own_etcd.astop()
            await registry.wait_state(ClusterState.LOST)
    assert open_sockets() == sockets
    assert live_tasks() == tasks

"""A network partition between a node and etcd (a proxy that stops forwarding)."""

from __future__ import annotations

import pytest
import trio

from spear_actors import ErrorCode, SpearError
from spear_actors.cluster import ClusterState, ClusterView, open_registry
from spear_actors.cluster.etcd import EtcdClient

from .cluster_helpers import WAIT_S, cluster_config, eventually, node_info
from .etcd_server import EtcdServer
from .partition import PartitionProxy


async def test_every_call_and_a_watch_opening_end_during_a_partition(etcd: EtcdServer, prefix: str) -> None:
    async with trio.open_nursery() as nursery:
        proxy = PartitionProxy(etcd.client_port)
        await nursery.start(proxy.run)
        async with EtcdClient([proxy.url], timeout_s=0.5) as client:
            await client.put(prefix + "k", b"v")
            async with client.watch(prefix + "w") as stream:
                proxy.partition()
                with trio.fail_after(WAIT_S):
                    with pytest.raises(SpearError) as read:
                        await client.get(prefix + "k")
                    assert read.value.code is ErrorCode.UNAVAILABLE
                    with pytest.raises(SpearError) as opening:
                        async with client.watch(prefix + "other"):
                            pass
                    assert opening.value.code is ErrorCode.UNAVAILABLE
                proxy.heal()
                # the open watch was only delayed: it carries on
                await client.put(prefix + "w", b"after")
                with trio.fail_after(WAIT_S):
                    response = await stream.__anext__()
                assert response.events[0].kv.value == b"after"
            kv = await client.get(prefix + "k")
            assert kv is not None and kv.value == b"v"
        nursery.cancel_scope.cancel()


async def test_registry_and_view_through_a_partition(etcd: EtcdServer, prefix: str) -> None:
    async with trio.open_nursery() as nursery:
        proxy = PartitionProxy(etcd.client_port)
        await nursery.start(proxy.run)
        config = cluster_config(proxy.url, prefix, lease_ttl_s=4, request_timeout_s=0.5)
        async with open_registry(config, node_info("cut-off")) as registry:
            await registry.claim_task("mine", "mine-id")
            view = ClusterView(registry)
            await nursery.start(view.run)
            assert view.fresh and view.task("mine") is not None

            proxy.partition()
            with trio.fail_after(WAIT_S):
                await registry.wait_state(ClusterState.LOST)
            with pytest.raises(SpearError) as refused:
                await registry.claim_task("new", "new-id")
            assert refused.value.code is ErrorCode.UNAVAILABLE
            # the silent watch is abandoned when the registry loses etcd; the copy stays
            await eventually(_fresh(view), lambda fresh: not fresh)
            assert view.task("mine") is not None

            proxy.heal()
            with trio.fail_after(WAIT_S):
                await registry.wait_state(ClusterState.CONNECTED)
            await eventually(_fresh(view), lambda fresh: fresh)
            mine = await eventually(lambda: registry.get_task("mine"), lambda entry: entry is not None)
            assert mine is not None and mine.owner == "cut-off" and mine.lease == registry.status().lease
        nursery.cancel_scope.cancel()


def _fresh(view: ClusterView):  # type: ignore[no-untyped-def]
    async def probe():  # type: ignore[no-untyped-def]
        return view.fresh

    return probe

"""A three-member etcd cluster losing the member a node talks to."""

from __future__ import annotations

import itertools

from spear_actors.cluster import ClusterRegistry, ClusterState, open_registry
from spear_actors.cluster.etcd import EtcdClient

from .cluster_helpers import cluster_config, eventually, node_info
from .etcd_server import EtcdCluster


def _status_of(registry: ClusterRegistry):  # type: ignore[no-untyped-def]
    async def probe():  # type: ignore[no-untyped-def]
        return registry.status()

    return probe


async def test_losing_one_member_of_three_keeps_the_registration(etcd_cluster: EtcdCluster) -> None:
    first, *_ = etcd_cluster.members
    config = cluster_config(first.url, "/members/", lease_ttl_s=4)
    config.endpoints = etcd_cluster.urls  # the first member first: the one that goes away
    async with open_registry(config, node_info("steady")) as registry, EtcdClient(etcd_cluster.urls[1:]) as other:
        await registry.claim_task("kept", "kept-id")
        lease = registry.status().lease

        await first.astop()
        # The next renewal fails over to a live member (seen as the lease's remaining
        # time going up again); the lease survives (a new leader, if one was needed,
        # extends every lease).
        seen: list[int] = []

        def renewed(ttl: int) -> bool:
            seen.append(ttl)
            return any(earlier < later for earlier, later in itertools.pairwise(seen))

        await eventually(lambda: other.lease_time_to_live(lease), renewed)
        await eventually(_status_of(registry), lambda s: s.state is ClusterState.CONNECTED and s.lease == lease)
        assert (await registry.claim_task("after", "after-id")).won
        kept = await registry.get_task("kept")
        assert kept is not None and kept.lease == lease
        assert registry.status().registrations == 1
        stored = await other.get("/members/nodes/steady")
        assert stored is not None and stored.lease == lease

"""The watch-fed local copy of the cluster, against a real etcd."""

from __future__ import annotations

import trio

from spear_actors.cluster import ClusterRegistry, ClusterState, ClusterView, open_registry

from .cluster_helpers import WAIT_S, cluster_config, eventually, node_info
from .etcd_server import EtcdServer


def _view_says(view: ClusterView):  # type: ignore[no-untyped-def]
    async def probe():  # type: ignore[no-untyped-def]
        return (view.fresh, [n.node_id for n in view.nodes()], [(t.task_name, t.owner) for t in view.tasks()])

    return probe


async def test_the_view_follows_claims_releases_and_departures(etcd: EtcdServer, prefix: str) -> None:
    config = cluster_config(etcd.url, prefix)
    async with open_registry(config, node_info("home")) as home, trio.open_nursery() as nursery:
        await home.claim_task("before", "before-id")
        view = ClusterView(home)
        await nursery.start(view.run)
        # the snapshot
        assert view.fresh and [n.node_id for n in view.nodes()] == ["home"]
        before = view.task("before")
        assert before is not None and before.owner == "home" and view.task_by_id("before-id") == before

        async with open_registry(config, node_info("away", capacity=3)) as away:
            claim = await away.claim_task("after", "after-id")
            with trio.fail_after(WAIT_S):
                await view.wait_revision(claim.entry.revision)
            after = view.task("after")
            assert after is not None and after.owner == "away" and view.task_by_id("after-id") == after
            node = view.node("away")
            assert node is not None and node.capacity == 3
            await home.release_task("before")
            await eventually(_view_says(view), lambda s: ("before", "home") not in s[2])
            assert view.task_by_id("before-id") is None
        # "away" left: its record and claim leave the view with it
        await eventually(_view_says(view), lambda s: s == (True, ["home"], []))
        assert view.task_by_id("after-id") is None
        nursery.cancel_scope.cancel()


async def test_the_view_goes_stale_without_etcd_and_resyncs_after(own_etcd: EtcdServer) -> None:
    config = cluster_config(own_etcd.url, "/view/")
    async with open_registry(config, node_info("home")) as home, trio.open_nursery() as nursery:
        view = ClusterView(home)
        await nursery.start(view.run)
        other = ClusterRegistry(config, node_info("vanishing"))
        try:
            async with trio.open_nursery() as other_nursery:
                await other_nursery.start(other.run)
                await other.claim_task("theirs", "theirs-id")
                await eventually(_view_says(view), lambda s: s[2] == [("theirs", "vanishing")])
                other_nursery.cancel_scope.cancel()  # "vanishing" stops renewing
        finally:
            await other.aclose()

        await own_etcd.astop()
        stale = await eventually(_view_says(view), lambda s: not s[0])
        assert stale[2] == [("theirs", "vanishing")]  # the last known state is kept
        assert view.last_error
        own_etcd.wipe()  # a new, empty etcd: "vanishing" and its claim are not in it
        await own_etcd.astart()

        await eventually(_view_says(view), lambda s: s == (True, ["home"], []))
        assert home.state is ClusterState.CONNECTED
        nursery.cancel_scope.cancel()

"""The cluster registry against a real etcd: registration, claims, leases, watches."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import trio

from spear_actors import ErrorCode, SpearError
from spear_actors.cluster import ClusterRegistry, ClusterState, ClusterView, TaskClaim, TaskEvent, open_registry
from spear_actors.cluster.etcd import EtcdClient
from tests.conftest import live_tasks, open_sockets

from .cluster_helpers import WAIT_S, cluster_config, eventually, node_info
from .etcd_server import EtcdServer


async def test_a_node_registers_and_is_listed_with_its_record(etcd: EtcdServer, prefix: str) -> None:
    config = cluster_config(etcd.url, prefix)
    async with open_registry(config, node_info("node-a", capacity=4)) as registry:
        assert registry.state is ClusterState.CONNECTED
        status = registry.status()
        assert status.registrations == 1 and status.lease and status.to_dict()["state"] == "connected"
        nodes = await registry.list_nodes()
        assert [n.node_id for n in nodes] == ["node-a"]
        assert nodes[0].capacity == 4 and nodes[0].endpoints == ("ws://127.0.0.1:1/node-a",)
        assert nodes[0].lease == status.lease
        assert await registry.get_node("node-a") == nodes[0]
        assert await registry.get_node("node-z") is None


async def test_leaving_removes_the_node_and_its_claims_at_once(etcd: EtcdServer, prefix: str) -> None:
    config = cluster_config(etcd.url, prefix)
    async with open_registry(config, node_info("observer")) as observer:
        async with open_registry(config, node_info("leaver")) as leaver:
            assert (await leaver.claim_task("t1", "id-1")).won
            assert {n.node_id for n in await observer.list_nodes()} == {"observer", "leaver"}
            await leaver.leave()
            assert leaver.state is ClusterState.LOST and leaver.status().last_error == "this node left the cluster"
            with pytest.raises(SpearError) as after_leaving:
                await leaver.claim_task("t2", "id-2")
            assert after_leaving.value.code is ErrorCode.UNAVAILABLE
        # revoked on exit: no TTL to wait for
        assert [n.node_id for n in await observer.list_nodes()] == ["observer"]
        assert await observer.get_task("t1") is None
        assert await observer.get_task_by_id("id-1") is None


async def test_claims_lookups_and_release(etcd: EtcdServer, prefix: str) -> None:
    config = cluster_config(etcd.url, prefix)
    async with open_registry(config, node_info("node-a")) as a, open_registry(config, node_info("node-b")) as b:
        won = await a.claim_task("resize", "task-1")
        assert won.won and won.entry.owner == "node-a" and won.entry.task_id == "task-1"
        again = await a.claim_task("resize", "task-1")
        assert again.won  # idempotent for the owner
        lost = await b.claim_task("resize", "task-9")
        assert not lost.won and lost.entry.owner == "node-a" and lost.entry.task_id == "task-1"
        with pytest.raises(SpearError) as reused_id:
            await b.claim_task("other-name", "task-1")
        assert reused_id.value.code is ErrorCode.ALREADY_EXISTS

        by_name = await b.get_task("resize")
        by_id = await b.get_task_by_id("task-1")
        assert by_name is not None and by_id is not None
        assert (by_name.owner, by_name.task_id) == (by_id.owner, by_id.task_id) == ("node-a", "task-1")
        assert by_name.lease == a.status().lease
        await b.claim_task("thumb", "task-2")
        assert [(e.task_name, e.owner) for e in await a.list_tasks()] == [("resize", "node-a"), ("thumb", "node-b")]
        assert [e.task_name for e in a.owned_tasks()] == ["resize"]

        assert not await b.release_task("resize")  # not b's to release
        assert await a.get_task("resize") is not None
        assert await a.release_task("resize")
        assert await b.get_task("resize") is None and await b.get_task_by_id("task-1") is None
        assert (await b.claim_task("resize", "task-3")).won


async def test_bad_names_are_invalid_argument(etcd: EtcdServer, prefix: str) -> None:
    async with open_registry(cluster_config(etcd.url, prefix), node_info("node-a")) as registry:
        for name, task_id in (("", "id"), ("name", ""), ("x" * 600, "id"), ("a\0b", "id")):
            with pytest.raises(SpearError) as bad:
                await registry.claim_task(name, task_id)
            assert bad.value.code is ErrorCode.INVALID_ARGUMENT
    with pytest.raises(SpearError) as bad_node:
        ClusterRegistry(cluster_config(etcd.url, prefix), node_info("has:colon"))
    assert bad_node.value.code is ErrorCode.INVALID_ARGUMENT


async def test_racing_claims_of_one_name_have_exactly_one_winner(etcd: EtcdServer, prefix: str) -> None:
    config = cluster_config(etcd.url, prefix)
    async with (
        open_registry(config, node_info("racer-a")) as a,
        open_registry(config, node_info("racer-b")) as b,
        open_registry(config, node_info("racer-c")) as c,
    ):
        registries = [a, b, c]
        for round_ in range(40):
            name = f"race-{round_}"
            claims: dict[str, TaskClaim] = {}

            async def claim(registry: ClusterRegistry, name: str = name, claims: dict[str, TaskClaim] = claims) -> None:
                claims[registry.node_id] = await registry.claim_task(name, f"{registry.node_id}-{name}")

            async with trio.open_nursery() as nursery:
                for registry in registries:
                    nursery.start_soon(claim, registry)
            winners = [node for node, claim_ in claims.items() if claim_.won]
            assert len(winners) == 1, claims
            owner = winners[0]
            for claim_ in claims.values():
                assert (claim_.entry.owner, claim_.entry.task_id) == (owner, f"{owner}-{name}")
            stored = await a.get_task(name)
            assert stored is not None and stored.owner == owner


async def test_an_expired_lease_takes_the_node_and_its_claims(etcd: EtcdServer, prefix: str) -> None:
    config = cluster_config(etcd.url, prefix)
    async with open_registry(config, node_info("observer")) as observer:
        doomed = ClusterRegistry(config, node_info("doomed"))
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(doomed.run)
                assert (await doomed.claim_task("orphan", "orphan-id")).won
                assert await observer.get_task("orphan") is not None
                # The node dies without a word: its keepalives stop, its lease is not revoked.
                nursery.cancel_scope.cancel()
        finally:
            await doomed.aclose()
        await eventually(observer.list_nodes, lambda nodes: [n.node_id for n in nodes] == ["observer"])
        assert await observer.get_task("orphan") is None
        assert await observer.get_task_by_id("orphan-id") is None
        # and the name is free for a live node
        assert (await observer.claim_task("orphan", "new-id")).won


async def test_a_node_whose_lease_is_revoked_registers_again_and_reclaims(etcd: EtcdServer, prefix: str) -> None:
    config = cluster_config(etcd.url, prefix)
    async with open_registry(config, node_info("node-a")) as registry, EtcdClient([etcd.url]) as admin:
        await registry.claim_task("kept", "kept-id")
        first_lease = registry.status().lease
        await admin.lease_revoke(first_lease)  # as if it had expired while the node was away

        status = await eventually(
            _status_of(registry), lambda s: s.registrations == 2 and s.state is ClusterState.CONNECTED
        )
        assert status.lease != first_lease
        entry = await eventually(lambda: registry.get_task("kept"), lambda e: e is not None)
        assert entry is not None and entry.owner == "node-a" and entry.lease == status.lease
        node = await registry.get_node("node-a")
        assert node is not None and node.lease == status.lease


async def test_a_name_taken_while_the_owner_was_away_is_a_conflict(etcd: EtcdServer, prefix: str) -> None:
    config = cluster_config(etcd.url, prefix)
    away = ClusterRegistry(config, node_info("away"))
    try:
        async with open_registry(config, node_info("thief")) as thief:
            async with trio.open_nursery() as nursery:
                await nursery.start(away.run)
                await away.claim_task("contested", "away-id")
                await away.claim_task("untouched", "untouched-id")
                nursery.cancel_scope.cancel()  # the node stalls: no more keepalives
            async with EtcdClient([etcd.url]) as admin:
                await admin.lease_revoke(away.status().lease)  # ... and its lease runs out
            assert (await thief.claim_task("contested", "thief-id")).won
            async with trio.open_nursery() as nursery:
                await nursery.start(away.run)  # the node wakes up
                status = await eventually(_status_of(away), lambda s: s.registrations == 2)
                assert status.state is ClusterState.CONNECTED
                assert [(c.task_name, c.owner) for c in status.conflicts] == [("contested", "thief")]
                assert status.to_dict()["conflicts"][0]["owner"] == "thief"
                assert [e.task_name for e in away.owned_tasks()] == ["untouched"]
                contested, untouched = await thief.get_task("contested"), await thief.get_task("untouched")
                assert contested is not None and contested.owner == "thief"
                assert untouched is not None and untouched.owner == "away" and untouched.lease == status.lease
                await away.leave()
                nursery.cancel_scope.cancel()
    finally:
        await away.aclose()


async def test_duplicate_node_id_does_not_take_over_a_live_registration(etcd: EtcdServer, prefix: str) -> None:
    config = cluster_config(etcd.url, prefix)
    async with (
        open_registry(config, node_info("twin", capacity=1)) as first,
        open_registry(config, node_info("twin", capacity=2)) as second,
    ):
        assert second.state is ClusterState.CONNECTING
        assert "another live lease" in (second.status().last_error or "")
        with pytest.raises(SpearError) as refused:
            await second.claim_task("x", "x-id")
        assert refused.value.code is ErrorCode.UNAVAILABLE
        node = await first.get_node("twin")
        assert node is not None and node.capacity == 1 and node.lease == first.status().lease


async def test_load_is_published(etcd: EtcdServer, prefix: str) -> None:
    async with open_registry(cluster_config(etcd.url, prefix), node_info("busy", capacity=10)) as registry:
        registry.set_load(7)
        node = await eventually(lambda: registry.get_node("busy"), lambda n: n is not None and n.load == 7)
        assert node is not None and node.utilisation == 0.7
        registry.set_load(3, capacity=12)
        await eventually(lambda: registry.get_node("busy"), lambda n: n is not None and (n.load, n.capacity) == (3, 12))


async def test_watch_reports_claims_releases_and_expiry(etcd: EtcdServer, prefix: str) -> None:
    config = cluster_config(etcd.url, prefix)
    async with open_registry(config, node_info("watcher")) as watcher:
        events: list[TaskEvent] = []
        async with watcher.watch_tasks() as stream:
            async with open_registry(config, node_info("worker")) as worker:
                await worker.claim_task("w1", "w1-id")
                await worker.claim_task("w2", "w2-id")
                await worker.release_task("w1")
            # leaving revokes the lease: w2 goes too
            with trio.fail_after(WAIT_S):
                async for event in stream:
                    events.append(event)
                    if len(events) == 4:
                        break
        assert [(e.kind, e.task_name) for e in events] == [
            ("claimed", "w1"),
            ("claimed", "w2"),
            ("released", "w1"),
            ("released", "w2"),
        ]
        assert all(e.entry is not None and e.entry.owner == "worker" for e in events)
        assert events[0].revision < events[1].revision < events[2].revision < events[3].revision


async def test_node_watch_reports_joins_and_leaves(etcd: EtcdServer, prefix: str) -> None:
    config = cluster_config(etcd.url, prefix)
    async with open_registry(config, node_info("watcher")) as watcher, watcher.watch_nodes() as stream:
        async with open_registry(config, node_info("visitor")):
            pass
        seen = []
        with trio.fail_after(WAIT_S):
            async for event in stream:
                seen.append((event.kind, event.node_id))
                if event.kind == "down":
                    break
        assert seen == [("up", "visitor"), ("down", "visitor")]


def _status_of(registry: ClusterRegistry):  # type: ignore[no-untyped-def]
    async def probe():  # type: ignore[no-untyped-def]
        return registry.status()

    return probe


async def test_nothing_is_left_behind_after_the_registry_closes(etcd: EtcdServer, prefix: str) -> None:
    sockets, tasks = open_sockets(), live_tasks()
    async with open_registry(cluster_config(etcd.url, prefix), node_info("tidy")) as registry:
        async with trio.open_nursery() as nursery:
            view = ClusterView(registry)
            await nursery.start(view.run)
            assert view.fresh
            nursery.cancel_scope.cancel()
        await registry.claim_task("t", "t-id")
        async with registry.watch_tasks() as stream:
            await registry.release_task("t")
            with trio.fail_after(WAIT_S):
                await stream.__anext__()
        await registry.list_nodes()
    assert open_sockets() == sockets
    assert live_tasks() == tasks


async def test_load_rides_on_the_renewal_when_not_published_apart(etcd: EtcdServer, prefix: str) -> None:
    config = cluster_config(etcd.url, prefix, load_publish_interval_s=0)
    async with open_registry(config, node_info("quiet", capacity=10)) as registry:
        registry.set_load(4)
        await eventually(lambda: registry.get_node("quiet"), lambda n: n is not None and n.load == 4)


async def test_records_that_do_not_parse_are_skipped_not_trusted(etcd: EtcdServer, prefix: str) -> None:
    config = cluster_config(etcd.url, prefix)
    async with open_registry(config, node_info("honest")) as registry, EtcdClient([etcd.url]) as rogue:
        async with registry.watch_cluster() as events:
            # What a broken or hostile peer with etcd access might write.
            await rogue.put(prefix + "nodes/liar", b"not json")
            too_many = {"node_id": "big", "endpoints": ["ws://x"] * 100, "version": "", "capacity": 1, "load": 0}
            await rogue.put(prefix + "nodes/big", json.dumps({**too_many, "started_at": 0}).encode())
            await rogue.put(prefix + "tasks/name/garbled", b'{"task_name": 7}')
            await registry.claim_task("fine", "fine-id")
            with trio.fail_after(WAIT_S):
                first = await events.__anext__()  # the garbage is skipped, not raised
            assert isinstance(first, TaskEvent) and first.task_name == "fine"
        assert [n.node_id for n in await registry.list_nodes()] == ["honest"]
        assert [t.task_name for t in await registry.list_tasks()] == ["fine"]
        assert await registry.get_task("garbled") is None
        snapshot = await registry.snapshot()
        assert [n.node_id for n in snapshot.nodes] == ["honest"] and [t.task_name for t in snapshot.tasks] == ["fine"]
        with pytest.raises(SpearError) as unreadable:
            await registry.claim_task("garbled", "mine")
        assert unreadable.value.code is ErrorCode.FAILED_PRECONDITION


async def test_random_concurrent_claims_and_releases_keep_one_owner_per_name(etcd: EtcdServer, prefix: str) -> None:
    config = cluster_config(etcd.url, prefix)
    rng = random.Random(17)
    names = [f"n{i}" for i in range(6)]
    async with (
        open_registry(config, node_info("r0")) as r0,
        open_registry(config, node_info("r1")) as r1,
        open_registry(config, node_info("r2")) as r2,
    ):
        registries = [r0, r1, r2]
        ids = itertools.count()

        async def step(registry: ClusterRegistry, name: str, claim: bool) -> None:
            if claim:
                await registry.claim_task(name, f"{registry.node_id}-{next(ids)}")
            else:
                await registry.release_task(name)

        for _ in range(120):
            async with trio.open_nursery() as nursery:
                for registry in registries:
                    nursery.start_soon(step, registry, rng.choice(names), rng.random() < 0.6)
            # Every name has at most one owner, and etcd agrees with what the owners think.
            owned = {(e.task_name, e.task_id, e.owner) for r in registries for e in r.owned_tasks()}
            assert len({name for name, _, _ in owned}) == len(owned)
            stored = await r0.list_tasks()
            assert {(e.task_name, e.task_id, e.owner) for e in stored} == owned
            for entry in stored:
                by_id = await r0.get_task_by_id(entry.task_id)
                assert by_id is not None and by_id.task_name == entry.task_name

"""etcd with authentication enabled: the client logs in, and again when its token dies."""

from __future__ import annotations

import pytest

from spear_actors import ErrorCode, SpearError
from spear_actors.cluster import ClusterState, open_registry
from spear_actors.cluster.etcd import EtcdClient

from .cluster_helpers import cluster_config, eventually, node_info
from .etcd_server import EtcdServer


async def _enable_auth(server: EtcdServer, password: str) -> None:
    async with EtcdClient([server.url]) as admin:
        await admin.call("/auth/user/add", {"name": "root", "password": password})
        await admin.call("/auth/role/add", {"name": "root"})
        await admin.call("/auth/user/grant", {"user": "root", "role": "root"})
        await admin.call("/auth/enable", {})


async def test_credentials_are_required_checked_and_renewed(own_etcd: EtcdServer) -> None:
    await _enable_auth(own_etcd, "s3cret")
    async with EtcdClient([own_etcd.url]) as anonymous:
        with pytest.raises(SpearError) as no_token:
            await anonymous.put("k", b"v")
        assert no_token.value.code is ErrorCode.UNAUTHENTICATED
    async with EtcdClient([own_etcd.url], username="root", password="wrong") as impostor:
        with pytest.raises(SpearError) as wrong:
            await impostor.put("k", b"v")
        assert wrong.value.code is ErrorCode.UNAUTHENTICATED

    async with EtcdClient([own_etcd.url], username="root", password="s3cret") as client:
        await client.put("k", b"v1")
        # etcd's simple tokens live in its memory: a restart invalidates ours.
        await own_etcd.astop()
        await own_etcd.astart()
        await client.put("k", b"v2")  # refused once, logged in again, retried
        kv = await client.get("k")
        assert kv is not None and kv.value == b"v2"


async def test_registry_with_etcd_credentials(own_etcd: EtcdServer) -> None:
    await _enable_auth(own_etcd, "s3cret")
    good = cluster_config(own_etcd.url, "/auth/", etcd_username="root", etcd_password="s3cret")
    bad = cluster_config(own_etcd.url, "/auth/", etcd_username="root", etcd_password="nope")
    async with (
        open_registry(good, node_info("trusted")) as registry,
        open_registry(bad, node_info("stranger")) as other,
    ):
        assert registry.state is ClusterState.CONNECTED
        assert (await registry.claim_task("t", "t-id")).won
        assert other.state is ClusterState.CONNECTING
        assert "authentication failed" in (other.status().last_error or "")
        await eventually(registry.list_nodes, lambda nodes: [n.node_id for n in nodes] == ["trusted"])

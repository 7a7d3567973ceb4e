"""etcd with authentication enabled: the client logs in, and again when its token dies."""

from __future__ import annotations

from pathlib import Path

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


async def test_registry_over_tls_with_a_client_certificate(tls_etcd: EtcdServer) -> None:
    tls = tls_etcd.tls
    assert tls is not None and tls_etcd.url.startswith("https://")
    config = cluster_config(
        tls_etcd.url,
        "/tls/",
        etcd_ca_file=str(tls.ca),
        etcd_cert_file=str(tls.client_cert),
        etcd_key_file=str(tls.client_key),
    )
    async with open_registry(config, node_info("secure")) as registry:
        assert registry.state is ClusterState.CONNECTED
        assert (await registry.claim_task("t", "t-id")).won
        async with registry.watch_tasks() as events:
            await registry.release_task("t")
            assert (await events.__anext__()).kind == "released"
    # Without the client certificate etcd refuses the handshake: unreachable for us.
    no_cert = cluster_config(tls_etcd.url, "/tls/", etcd_ca_file=str(tls.ca))
    async with open_registry(no_cert, node_info("anonymous")) as refused:
        assert refused.state is ClusterState.CONNECTING
        assert "unreachable" in (refused.status().last_error or "")
    # Not trusting etcd's CA: the same.
    async with EtcdClient([tls_etcd.url]) as untrusting:
        with pytest.raises(SpearError) as unverified:
            await untrusting.get("k")
        assert unverified.value.code is ErrorCode.UNAVAILABLE


def test_unreadable_tls_files_are_invalid_argument(tmp_path: Path) -> None:
    config = cluster_config("https://127.0.0.1:1", "/tls/", etcd_ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(SpearError) as bad:
        config.tls_context()
    assert bad.value.code is ErrorCode.INVALID_ARGUMENT

"""A real etcd (Debian's ``etcd-server``) for the cluster tests; they skip without it."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from .etcd_server import ETCD, EtcdCluster, EtcdServer, ServerTls

_prefixes = itertools.count()


def _require_etcd() -> None:
    if ETCD is None:
        pytest.skip("etcd is not installed (apt-get install etcd-server; .ci/run does it)")


@pytest.fixture(scope="package")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One etcd for the cluster tests (stopped when they are done); tests keep apart
    by using their own key prefix."""
    _require_etcd()
    server = EtcdServer(tmp_path_factory.mktemp("etcd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd of this test alone (it may stop, wipe and restart it)."""
    _require_etcd()
    server = EtcdServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses."""
    return f"/test-{next(_prefixes)}/"


@pytest.fixture
def tls_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd of this test alone that speaks only TLS and wants client certificates."""
    _require_etcd()
    import trustme

    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    client_cert = ca.issue_cert("spear-node")
    files = ServerTls(
        ca=tmp_path / "ca.pem",
        cert=tmp_path / "server.pem",
        key=tmp_path / "server.key",
        client_cert=tmp_path / "client.pem",
        client_key=tmp_path / "client.key",
    )
    ca.cert_pem.write_to_path(str(files.ca))
    server_cert.cert_chain_pems[0].write_to_path(str(files.cert))
    server_cert.private_key_pem.write_to_path(str(files.key))
    client_cert.cert_chain_pems[0].write_to_path(str(files.client_cert))
    client_cert.private_key_pem.write_to_path(str(files.client_key))
    server = EtcdServer(tmp_path, tls=files)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """Three etcd members on loopback forming one cluster, for this test alone."""
    _require_etcd()
    cluster = EtcdCluster(tmp_path, 3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()

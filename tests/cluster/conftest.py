"""A real etcd (Debian's ``etcd-server``) for the cluster tests; they skip without it."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from .etcd_server import ETCD, EtcdServer

_prefixes = itertools.count()


def _require_etcd() -> None:
    if ETCD is None:
        pytest.skip("etcd is not installed (apt-get install etcd-server; .ci/run does it)")


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One etcd for the session; tests keep apart by using their own key prefix."""
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

"""Fixtures for the artifact tests: a live HTTP server and stores on a temp data dir."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from spear_actors.artifacts import ArtifactStore

from .artifact_helpers import ArtifactServer

StoreFactory = Callable[..., ArtifactStore]


@pytest.fixture
async def server(nursery: trio.Nursery) -> ArtifactServer:
    """An artifact server on 127.0.0.1 (port 0), stopped with the test's nursery."""
    running = ArtifactServer()
    await nursery.start(running.run)
    return running


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def make_store(data_dir: Path) -> StoreFactory:
    """New stores on the same data dir (a second one is a node restart). Back-off is
    tiny so tests that do not use the mock clock still retry quickly."""

    def make(**options: object) -> ArtifactStore:
        settings: dict[str, object] = {"backoff_base": 0.01, "backoff_max": 0.05, "http_timeout": 5.0}
        settings.update(options)
        return ArtifactStore(data_dir, **settings)  # type: ignore[arg-type]

    return make

"""Every connection test runs once per transport: TCP (port 0), unix socket, websocket."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["tcp", "unix", "ws"])
def url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    scheme: str = request.param
    if scheme == "unix":
        # a short directory: unix socket paths are limited to ~107 bytes
        return f"unix://{tmp_path_factory.mktemp('u') / 's.sock'}"
    return f"{scheme}://127.0.0.1:0"

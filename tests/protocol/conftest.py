"""Every connection test runs once per transport: TCP (port 0), unix socket, websocket."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from spear_actors.protocol.transports import server_ssl_context


@pytest.fixture(params=["tcp", "unix", "ws"])
def url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    scheme: str = request.param
    if scheme == "unix":
        # a short directory: unix socket paths are limited to ~107 bytes
        return f"unix://{tmp_path_factory.mktemp('u') / 's.sock'}"
    return f"{scheme}://127.0.0.1:0"


@pytest.fixture
def certificates(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context made from cert and key files, client context trusting the CA)."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return server_ssl_context(str(cert_file), str(key_file)), client_context

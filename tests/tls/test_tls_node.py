"""A node with wss:// and tls:// listeners ([tls] cert and key), reached from the
Python client with a token; an untrusted certificate is a named error and leaves no
socket open."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trio

from spear_actors import connect
from spear_actors.config import NodeConfig, TlsConfig
from spear_actors.errors import ErrorCode, SpearError
from spear_actors.serving import open_node

from ..conftest import agent_spec, fast_config, open_sockets
from .conftest import Certificates

TOKEN = "tls-s3cret"


def tls_config(tmp_path: Path, certificates: Certificates) -> NodeConfig:
    return fast_config(
        tmp_path,
        listen=["wss://127.0.0.1:0", "tls://127.0.0.1:0", "ws://127.0.0.1:0"],
        token=TOKEN,
        tls=TlsConfig(cert=certificates.cert, key=certificates.key),
    )


async def test_wss_and_tls_nodes_serve_the_python_client_with_a_token(
    tmp_path: Path, certificates: Certificates, no_leaked_processes: None
) -> None:
    async with open_node(tls_config(tmp_path, certificates)) as node:
        assert [endpoint.scheme for endpoint in node.endpoints] == ["wss", "tls", "ws"]
        async with connect(str(node.endpoints[2]), TOKEN) as plain:  # next to them, a plain listener
            assert (await plain.get_health())["status"]
        trusting = ssl.create_default_context(cafile=str(certificates.cacert))
        for endpoint in node.endpoints[:2]:
            # by the CA file, and by a context the caller made
            for options in ({"cacert": certificates.cacert}, {"ssl_context": trusting}):
                async with connect(str(endpoint), TOKEN, **options) as client:  # type: ignore[arg-type]
                    response = await client.invoke(
                        "add", [20, 22], task_name="calc", artifact_spec=agent_spec(), create_if_not_exists=True
                    )
                    assert response["result"] == 42
            with pytest.raises(SpearError) as refused:
                async with connect(str(endpoint), "wrong", cacert=certificates.cacert):
                    pass
            assert refused.value.code is ErrorCode.UNAUTHENTICATED


@pytest.mark.parametrize("scheme", ["wss", "tls"])
async def test_an_untrusted_certificate_is_a_named_error_and_leaves_no_socket(
    tmp_path: Path, certificates: Certificates, other_ca: Path, scheme: str
) -> None:
    config = tls_config(tmp_path, certificates)
    config.listen = [f"{scheme}://127.0.0.1:0"]
    async with open_node(config) as node:
        before = open_sockets()
        for options in ({}, {"cacert": other_ca}):  # system trust, and a CA that did not sign it
            with trio.fail_after(5), pytest.raises(SpearError) as info:  # at once, not after connect_timeout
                async with connect(str(node.endpoints[0]), TOKEN, connect_timeout=30, **options):  # type: ignore[arg-type]
                    pass
            assert info.value.code is ErrorCode.UNAVAILABLE
            assert "TLS handshake failed" in info.value.message and "certificate" in info.value.message
        # the node's side ends its half when the handshake fails; ours is closed at once
        with trio.fail_after(5):
            while open_sockets() > before:
                await trio.sleep(0.01)


async def test_a_bad_cacert_file_is_invalid_argument(tmp_path: Path) -> None:
    with pytest.raises(SpearError) as info:
        async with connect("wss://127.0.0.1:1", cacert=tmp_path / "missing.pem"):
            pass
    assert info.value.code is ErrorCode.INVALID_ARGUMENT and "missing.pem" in info.value.message


async def test_a_tls_listener_without_a_certificate_does_not_start(tmp_path: Path) -> None:
    with pytest.raises(SpearError) as info:
        async with open_node(fast_config(tmp_path, listen=["wss://127.0.0.1:0"])):
            pass
    assert info.value.code is ErrorCode.INVALID_ARGUMENT and "[tls] cert and key" in info.value.message


def test_the_tls_table_of_a_config_file(tmp_path: Path) -> None:
    config = NodeConfig.from_dict({"listen": "wss://0.0.0.0:7443", "tls": {"cert": "c.pem", "key": "k.pem"}}, tmp_path)
    assert config.tls == TlsConfig(cert=tmp_path / "c.pem", key=tmp_path / "k.pem")
    with pytest.raises(SpearError) as info:
        NodeConfig.from_dict({"tls": {"certificate": "c.pem"}}, tmp_path)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT and "certificate" in info.value.message

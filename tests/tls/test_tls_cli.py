"""A wss:// node with a token, from real ``spear`` subprocesses: ``--tls-cert`` /
``--tls-key`` for ``spear serve``, ``--cacert`` or ``$SPEAR_CACERT`` for the client
commands, and a certificate the client does not trust named as the cause."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import trio

from ..conftest import EXAMPLE_AGENT
from ..node_process import SPEAR, spear_serve
from .conftest import Certificates


async def spear(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [*SPEAR, *args], capture_stdout=True, capture_stderr=True, check=False, env={**os.environ, **(env or {})}
    )


async def test_a_wss_node_with_a_token_from_the_cli(tmp_path: Path, certificates: Certificates, other_ca: Path) -> None:
    token = {"SPEAR_TOKEN": "cli-s3cret"}
    async with spear_serve(
        tmp_path,
        f'listen = ["wss://127.0.0.1:0"]\n[policy]\nartifact_roots = ["{EXAMPLE_AGENT.parent}"]\n',
        "--tls-cert",
        str(certificates.cert),
        "--tls-key",
        str(certificates.key),
        "--token",
        token["SPEAR_TOKEN"],
    ) as served:
        assert served.url.startswith("wss://")
        invoke = ("invoke", "--url", served.url, "--artifact", str(EXAMPLE_AGENT), "--function", "add")
        done = await spear(*invoke, "--params", "[1, 2]", "--cacert", str(certificates.cacert), env=token)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == 3
        done = await spear(
            "health", "--url", served.url, "--json", env={**token, "SPEAR_CACERT": str(certificates.cacert)}
        )
        assert done.returncode == 0, done.stderr
        for untrusted in ({}, {"SPEAR_CACERT": str(other_ca)}):
            done = await spear("health", "--url", served.url, env={**token, **untrusted})
            text = done.stderr.decode()
            assert done.returncode == 1 and "Traceback" not in text, text
            assert text.startswith(
                f"UNAVAILABLE: cannot connect to the spear node at {served.url}: TLS handshake failed"
            )
            assert "certificate" in text and "--cacert" in text

"""Artifact downloads under the policy: a total deadline, no private targets when
asked, and no credentials in any log line. A real HTTP server on loopback."""

from __future__ import annotations

import logging

import pytest
import trio

from spear_actors import ErrorCode, SpearError
from spear_actors.policy import OperatorPolicy

from ..artifacts.artifact_helpers import ArtifactServer, sha
from ..conftest import EXAMPLE_AGENT
from .conftest import PolicyNode

AGENT = EXAMPLE_AGENT.read_bytes()


def remote(url: str, checksum: str = sha(AGENT)) -> dict[str, object]:
    return {"location": url, "checksum": checksum}


async def failure(awaitable: object, code: ErrorCode) -> SpearError:
    with trio.fail_after(60), pytest.raises(SpearError) as info:
        await awaitable  # type: ignore[misc]
    assert info.value.code is code, info.value
    return info.value


async def test_a_trickling_server_cannot_hold_a_call_past_its_deadline(
    policy_node: PolicyNode, server: ArtifactServer
) -> None:
    url = server.serve("/slow.py", AGENT, stall_after=1)  # one byte, then nothing
    async with policy_node() as (_, client):
        error = await failure(
            client.invoke("add", [1, 2], task_name="slow", artifact_spec=remote(url), context={"timeout_ms": 1500}),
            ErrorCode.DEADLINE_EXCEEDED,
        )
        assert "download did not finish" in error.message
    async with policy_node(fetch_timeout_s=1.0) as (_, client):  # the total cap, with a long call deadline
        error = await failure(
            client.invoke("add", [1, 2], task_name="slow2", artifact_spec=remote(url), context={"timeout_ms": 600_000}),
            ErrorCode.DEADLINE_EXCEEDED,
        )
        assert "fetch_timeout_s" in error.message
    server.release.set()


async def test_private_targets_can_be_refused(policy_node: PolicyNode, server: ArtifactServer) -> None:
    url = server.serve("/hello_agent.py", AGENT)
    async with policy_node(fetch_block_private=True) as (_, client):
        for location in (url, url.replace("127.0.0.1", "localhost")):
            error = await failure(
                client.invoke("add", [1, 2], task_name="p", artifact_spec=remote(location)),
                ErrorCode.PERMISSION_DENIED,
            )
            assert "non-public address" in error.message
        assert server.connections == 0  # refused before connecting: no port state revealed
    async with policy_node(fetch_block_private=True, fetch_allowed_hosts=["127.0.0.1"]) as (_, client):
        response = await client.invoke("add", [1, 2], task_name="ok", artifact_spec=remote(url))
        assert response["result"] == 3
        await failure(
            client.invoke(
                "add", [1, 2], task_name="other", artifact_spec=remote(url.replace("127.0.0.1", "localhost"))
            ),
            ErrorCode.PERMISSION_DENIED,
        )


def test_beyond_loopback_the_defaults_tighten() -> None:
    for listen in (["ws://0.0.0.0:7411"], ["tcp://10.1.2.3:7000"], ["ws://127.0.0.1:1", "ws://[::]:2"]):
        policy = OperatorPolicy().resolved(listen)
        assert (
            policy.fetch_block_private is True
            and policy.artifact_roots == []
            and policy.sources
            == [
                "inline",
                "local",
            ]
        )
    for listen in ([], ["ws://127.0.0.1:7411"], ["unix:///tmp/x.sock", "tcp://localhost:1", "ws://[::1]:3"]):
        policy = OperatorPolicy().resolved(listen)
        assert policy.fetch_block_private is False and policy.artifact_roots and "http" in (policy.sources or [])


async def test_credentials_in_urls_never_reach_a_log_line(
    policy_node: PolicyNode, server: ArtifactServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    path = "/hello_agent.py?X-Amz-Signature=topsecretsig&X-Amz-Credential=AKIAEXAMPLE"
    server.serve(path, AGENT, failures=[503])
    url = f"http://alice:pa55word@127.0.0.1:{server.port}{path}"
    async with policy_node() as (_, client):
        response = await client.invoke("add", [1, 2], task_name="creds", artifact_spec=remote(url))
        assert response["result"] == 3
        bad = f"http://alice:pa55word@127.0.0.1:{server.port}/missing.py?X-Amz-Signature=topsecretsig"
        error = await failure(
            client.invoke("add", [1, 2], task_name="gone", artifact_spec=remote(bad, sha(b"x"))), ErrorCode.NOT_FOUND
        )
        assert "pa55word" not in repr(error.to_dict()) and "topsecretsig" not in repr(error.to_dict())
    assert server.hits[path] == 2  # the retry was logged too
    assert any("HTTP Request" in record.getMessage() for record in caplog.records)  # httpx did log
    for record in caplog.records:
        text = record.getMessage() + repr(record.args)
        for secret in ("pa55word", "topsecretsig", "AKIAEXAMPLE"):
            assert secret not in text, record.getMessage()

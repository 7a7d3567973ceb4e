"""Before authentication almost nothing: a connection limit, refused with a clear
error, and descriptors kept for agents so a connection flood cannot stop them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from spear_actors import ErrorCode
from spear_actors.client import connect
from spear_actors.protocol.messages import Error, decode_message
from spear_actors.protocol.transports import open_transport

from ..conftest import EXAMPLE_AGENT
from ..node_process import spear_serve, with_nofile


async def test_a_connection_flood_is_refused_and_agents_still_start(tmp_path: Path) -> None:
    config = "\n".join(
        [
            'listen = ["tcp://127.0.0.1:0"]',
            "max_connections = 40",
            "connection_fd_reserve = 64",
            "[tasks.hello]",
            f"artifact = {{ location = {json.dumps(str(EXAMPLE_AGENT))} }}",
        ]
    )
    # 128 descriptors: a flood of 200 connections would exhaust them without the limit
    async with spear_serve(tmp_path, config, preexec_fn=with_nofile(128)) as node:
        async with connect(node.url) as client, trio.open_nursery() as nursery:
            flood_open = trio.Event()
            refusals: list[Error] = []
            held = 0

            async def flood_one() -> None:
                nonlocal held
                try:
                    async with open_transport(node.url, connect_timeout=5) as transport:
                        with trio.move_on_after(3):
                            body = await transport.receive_body()
                            if body is not None:
                                message = decode_message(body)
                                assert isinstance(message, Error)
                                refusals.append(message)
                                return
                        held += 1
                        await flood_open.wait()  # admitted: hold the descriptor
                except Exception:
                    pass  # refused before connecting: also a refusal

            for _ in range(200):
                nursery.start_soon(flood_one)
            with trio.fail_after(30):
                while len(refusals) + held < 150:
                    await trio.sleep(0.05)
            # agents start (and the already connected client is served) during the flood
            for n in range(3):
                response = await client.invoke(
                    "add", [n, 1], task_name=f"flood-{n}", artifact_spec={"location": str(EXAMPLE_AGENT)}
                )
                assert response["result"] == n + 1
            flood_open.set()
        assert refusals, "no connection was refused"
        assert refusals[0].code == ErrorCode.RESOURCE_EXHAUSTED.value
        assert "too many client connections" in refusals[0].message
        assert held <= 40
    log = node.stderr.decode()
    assert "Traceback" not in log
    lines = log.count("refused a connection: too many connections")
    assert 1 <= lines < len(refusals) // 4  # rate-limited: one line per 10 s


async def test_refused_handshakes_are_one_rate_limited_log_line_not_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from spear_actors.protocol.framing import encode_frame
    from spear_actors.serving import open_node

    from ..conftest import fast_config

    async with open_node(fast_config(tmp_path, listen=["tcp://127.0.0.1:0"])) as node:
        endpoint = node.endpoints[0]
        for _ in range(20):
            stream = await trio.open_tcp_stream(endpoint.host, endpoint.port)
            await stream.send_all(encode_frame(b"\xc1 not msgpack"))
            with trio.fail_after(5):
                while await stream.receive_some(4096):
                    pass  # the error frame, then the close
            await stream.aclose()
        async with connect(str(endpoint)) as client:  # still serving
            assert (await client.get_health())["status"] == "SERVING"
    refusals = [r for r in caplog.records if "refused a connection" in r.getMessage()]
    assert 1 <= len(refusals) <= 2 and "PROTOCOL_ERROR" in refusals[0].getMessage()  # one per 10 s, of 20
    assert not [r for r in caplog.records if r.exc_info]


async def test_websocket_sockets_count_before_their_upgrade(tmp_path: Path) -> None:
    from spear_actors.serving import open_node

    from ..conftest import fast_config

    async with open_node(fast_config(tmp_path, listen=["ws://127.0.0.1:0"], max_connections=3)) as node:
        endpoint = node.endpoints[0]
        idle = [await trio.open_tcp_stream(endpoint.host, endpoint.port) for _ in range(3)]  # never upgrade
        await trio.sleep(0.1)
        refused = await trio.open_tcp_stream(endpoint.host, endpoint.port)
        answer = b""
        with trio.fail_after(5):
            while chunk := await refused.receive_some(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert b"RESOURCE_EXHAUSTED: node has too many client connections (limit 3)" in answer
        for stream in [*idle, refused]:
            await stream.aclose()


async def test_one_address_cannot_take_every_connection(tmp_path: Path) -> None:
    from spear_actors.serving import open_node

    from ..conftest import fast_config

    config = fast_config(tmp_path, listen=["tcp://127.0.0.1:0"], max_connections_per_address=2)
    async with open_node(config) as node:
        url = str(node.endpoints[0])
        async with connect(url) as first, connect(url) as second:
            async with open_transport(url) as third:
                with trio.fail_after(5):
                    body = await third.receive_body()
                assert body is not None
                refusal = decode_message(body)
                assert isinstance(refusal, Error) and refusal.code == ErrorCode.RESOURCE_EXHAUSTED.value
                assert refusal.message == "too many connections from this address (limit 2)"
            assert (await first.get_health())["status"] == "SERVING"
            assert (await second.get_health())["status"] == "SERVING"
        with trio.fail_after(5):  # their slots are free again once they close
            while True:
                async with open_transport(url) as probe:
                    with trio.move_on_after(0.2):
                        if await probe.receive_body() is not None:
                            await trio.sleep(0.05)
                            continue
                    break
        async with connect(url) as again:
            assert (await again.get_health())["status"] == "SERVING"

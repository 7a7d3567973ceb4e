"""The ``spear`` command, run as a real subprocess against a real node."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import trio

from spear_actors.node import Node

from ..conftest import EXAMPLE_AGENT, ROOT, child_pids

SPEAR = [sys.executable, "-m", "spear_actors.cli"]


async def spear(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process([*SPEAR, *args], capture_stdout=True, capture_stderr=True, check=False)


async def test_invoke_prints_the_result_as_json(node: Node) -> None:
    url = str(node.endpoints[0])
    done = await spear(
        "invoke", "--url", url, "--artifact", str(EXAMPLE_AGENT), "--function", "add", "--params", "[1, 2]"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == 3
    again = await spear(
        "invoke", "--url", url, "--task-name", "hello_agent", "--function", "echo", "--params", '{"k": "v"}', "--json"
    )
    response = json.loads(again.stdout)
    assert response["result"] == {"k": "v"} and response["status"] == "COMPLETED"


async def test_invoke_reads_params_from_a_file(node: Node, tmp_path: Path) -> None:
    params = tmp_path / "params.json"
    params.write_text("[20, 22]")
    done = await spear(
        "invoke",
        "--url",
        str(node.endpoints[0]),
        "--artifact",
        str(EXAMPLE_AGENT),
        "--function",
        "add",
        "--params",
        f"@{params}",
    )
    assert json.loads(done.stdout) == 42


async def test_errors_go_to_stderr_with_the_code_and_exit_1(node: Node) -> None:
    done = await spear(
        "invoke",
        "--url",
        str(node.endpoints[0]),
        "--artifact",
        str(EXAMPLE_AGENT),
        "--function",
        "fail",
        "--params",
        '{"message": "nope"}',
    )
    assert done.returncode == 1
    assert done.stdout == b""
    assert done.stderr.decode().strip() == "FUNCTION_ERROR: ValueError: nope"


async def test_unreachable_node_is_unavailable() -> None:
    done = await spear("health", "--url", "tcp://127.0.0.1:1")
    assert done.returncode == 1
    assert done.stderr.startswith(b"UNAVAILABLE: ")


async def test_health(node: Node) -> None:
    done = await spear("health", "--url", str(node.endpoints[0]), "--json")
    assert json.loads(done.stdout)["status"] == "SERVING"


async def test_serve_runs_the_example_config_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        (ROOT / "examples" / "node.toml")
        .read_text()
        .replace("ws://127.0.0.1:7411", "ws://127.0.0.1:0")
        .replace('"hello_agent.py"', json.dumps(str(EXAMPLE_AGENT)))
    )
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            lambda task_status: trio.run_process(
                [*SPEAR, "serve", "--config", str(config), "--data-dir", str(tmp_path / "data")],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                check=False,
                task_status=task_status,
            )
        )
        assert process.stdout is not None
        output = b""
        with trio.fail_after(20):
            while b"try:" not in output:
                output += await process.stdout.receive_some(4096)
        url = re.search(rb"listening on (\S+)", output)
        assert url is not None
        done = await spear(
            "invoke", "--url", url.group(1).decode(), "--task-name", "hello", "--function", "add", "--params", "[2, 3]"
        )
        assert json.loads(done.stdout) == 5
        agents = child_pids(process.pid)
        assert agents  # the declared task keeps one warm agent
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            await process.wait()
    assert process.returncode == 0
    for pid in agents:  # the node's agents (grandchildren of this test) are gone too
        assert not os.path.exists(f"/proc/{pid}")

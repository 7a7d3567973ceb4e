"""The rough edges of the ``spear`` command (issue 16), each through real ``spear``
subprocesses against a real node."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import trio

from spear_actors import __version__
from spear_actors.node import Node

from ..conftest import EXAMPLE_AGENT
from ..node_process import SPEAR, spear_serve


async def spear(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [*SPEAR, *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**os.environ, **(env or {})},
    )


async def _hello(node: Node) -> str:
    url = str(node.endpoints[0])
    done = await spear(
        "invoke", "--url", url, "--artifact", str(EXAMPLE_AGENT), "--function", "add", "--params", "[1, 2]"
    )
    assert done.returncode == 0, done.stderr
    return url


def _one_error_line(done: subprocess.CompletedProcess[bytes]) -> str:
    assert done.returncode == 1, (done.stdout, done.stderr)
    text = done.stderr.decode()
    assert "Traceback" not in text, text
    return text.strip()


async def test_a_missing_params_file_is_one_line(node: Node) -> None:
    done = await spear(
        "invoke", "--url", str(node.endpoints[0]), "--task-name", "x", "--function", "f", "--params", "@missing.json"
    )
    assert _one_error_line(done) == "INVALID_ARGUMENT: --params: cannot read 'missing.json': No such file or directory"


async def test_a_closed_pipe_is_no_traceback(node: Node) -> None:
    process = await trio.lowlevel.open_process(
        [*SPEAR, "tasks", "--json", "--url", str(node.endpoints[0])], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    await process.stdout.aclose()  # the reader went away before the output came
    stderr = b""
    async for chunk in process.stderr:
        stderr += chunk
    await process.wait()
    assert b"Traceback" not in stderr and b"BrokenPipe" not in stderr, stderr


async def test_no_node_running_says_why_and_how_to_start_one() -> None:
    done = await spear("health", "--url", "ws://127.0.0.1:1")
    text = _one_error_line(done)
    assert text.startswith("UNAVAILABLE: no spear node is reachable at ws://127.0.0.1:1: connection refused")
    assert "spear serve" in text and "make run" in text


async def test_task_commands_take_a_name_or_an_id(node: Node) -> None:
    url = await _hello(node)
    by_name = await spear("task", "hello_agent", "--url", url, "--json")
    assert by_name.returncode == 0, by_name.stderr
    task = json.loads(by_name.stdout)
    by_id = await spear("task", task["task_id"], "--url", url, "--json")
    assert json.loads(by_id.stdout)["task_name"] == "hello_agent"
    listed = await spear("executions", "--task", "hello_agent", "--url", url, "--json")
    assert [e["task_id"] for e in json.loads(listed.stdout)["executions"]] == [task["task_id"]]
    deleted = await spear("delete-task", "hello_agent", "--url", url, "--json")
    assert json.loads(deleted.stdout)["deleted"] is True
    gone = await spear("task", "hello_agent", "--url", url)
    assert _one_error_line(gone) == "NOT_FOUND: no task has the id or name 'hello_agent'"


async def test_a_typo_in_task_name_lists_close_names(node: Node) -> None:
    url = await _hello(node)
    done = await spear("invoke", "--url", url, "--task-name", "helo_agent", "--function", "add", "--params", "[1, 2]")
    text = _one_error_line(done)
    assert text.startswith("NOT_FOUND: no task has the name 'helo_agent'; did you mean: hello_agent?")
    assert "--artifact" in text


async def test_force_new_instance(node: Node) -> None:
    url = await _hello(node)
    first = json.loads((await spear("task", "hello_agent", "--url", url, "--json")).stdout)
    done = await spear(
        "invoke", "--url", url, "--task-name", "hello_agent", "--function", "add", "--params", "[2, 2]",
        "--force-new-instance",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == 4
    after = json.loads((await spear("task", "hello_agent", "--url", url, "--json")).stdout)
    assert len(after["instances"]) == len(first["instances"]) + 1


async def test_a_plain_function_called_as_a_stream_prints_its_result(node: Node) -> None:
    url = await _hello(node)
    done = await spear(
        "invoke",
        "--url",
        url,
        "--task-name",
        "hello_agent",
        "--function",
        "add",
        "--params",
        "[2, 5]",
        "--mode",
        "stream",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == 7


async def test_json_errors_and_verbose_tracebacks(node: Node) -> None:
    url = await _hello(node)
    args = [
        "invoke",
        "--url",
        url,
        "--task-name",
        "hello_agent",
        "--function",
        "fail",
        "--params",
        '{"message": "nope"}',
    ]
    as_json = await spear(*args, "--json")
    assert as_json.returncode == 1 and as_json.stdout == b""
    error = json.loads(as_json.stderr)["error"]
    assert error["code"] == "FUNCTION_ERROR" and error["message"] == "ValueError: nope"
    verbose = await spear(*args, "--verbose")
    lines = verbose.stderr.decode().splitlines()
    assert lines[0] == "FUNCTION_ERROR: ValueError: nope"
    assert lines[1].startswith("Traceback") and lines[-1] == "ValueError: nope"
    plain = await spear(*args)
    assert plain.stderr.decode().strip() == "FUNCTION_ERROR: ValueError: nope"


async def test_version_and_help_with_examples() -> None:
    version = await spear("--version")
    assert version.stdout.decode().strip() == f"spear {__version__}"
    for command in ("serve", "invoke", "status", "wait", "cancel", "tasks", "task", "delete-task", "executions",
                    "health", "stats", "top"):  # fmt: skip
        done = await spear(command, "--help")
        assert done.returncode == 0
        assert b"examples:\n  spear " in done.stdout, command
    lines = (await spear("invoke", "--help")).stdout.decode().splitlines()
    for option in ("--task-name", "--task-id", "--function", "--timeout-ms", "--mode", "--force-new-instance"):
        at = next(i for i, line in enumerate(lines) if line.strip().startswith(option))
        help_text = lines[at].split(None, 2)[2:] or [lines[at + 1].strip()]
        assert help_text[0] and not help_text[0].startswith("-"), option


async def test_a_busy_port_is_one_line_naming_it_and_how_to_choose_another(node: Node, tmp_path: Path) -> None:
    port = node.endpoints[0].port
    done = await spear("serve", "--listen", f"ws://127.0.0.1:{port}", "--data-dir", str(tmp_path / "d"))
    text = _one_error_line(done)
    assert text.count("\n") == 0
    assert f"port {port} is already in use" in text and "make run PORT=" in text and "SPEAR_LISTEN" in text


async def test_no_spinner_on_a_pipe(node: Node) -> None:
    url = await _hello(node)
    done = await spear("invoke", "--url", url, "--task-name", "hello_agent", "--function", "sleep", "--params", "[1.3]")
    assert done.returncode == 0 and done.stderr == b""


async def test_serve_beyond_loopback_needs_a_token_and_clients_take_it_from_the_environment(tmp_path: Path) -> None:
    refused = await spear("serve", "--listen", "ws://0.0.0.0:0", "--data-dir", str(tmp_path / "d"))
    text = _one_error_line(refused)
    assert text.startswith("FAILED_PRECONDITION: refusing to listen on ws://0.0.0.0:0 without a token")
    assert "--insecure" in text
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    async with spear_serve(tmp_path, 'listen = ["tcp://0.0.0.0:0"]', "--token-file", str(token_file)) as served:
        url = served.url.replace("0.0.0.0", "127.0.0.1")
        ok = await spear("health", "--url", url, "--json", env={"SPEAR_TOKEN": "s3cret"})
        assert json.loads(ok.stdout)["status"] == "SERVING"
        ok_file = await spear("health", "--url", url, "--token-file", str(token_file))
        assert ok_file.returncode == 0
        wrong = [await spear("health", "--url", url, env={"SPEAR_TOKEN": "guess"}) for _ in range(6)]
        assert _one_error_line(wrong[0]).startswith("UNAUTHENTICATED: missing or wrong token")
        assert "too many failed authentications" in _one_error_line(wrong[5])
    log = served.stderr.decode()
    assert "failed authentication" in log and "Traceback" not in log


async def test_serve_reports_its_drain_and_stops_at_once_on_a_second_sigint(tmp_path: Path) -> None:
    config = "\n".join(
        [
            'listen = ["ws://127.0.0.1:0"]',
            "shutdown_grace_s = 60",
            "[tasks.hello]",
            f"artifact = {{ location = {json.dumps(str(EXAMPLE_AGENT))} }}",
        ]
    )
    async with spear_serve(tmp_path, config) as served, trio.open_nursery() as nursery:
        nursery.start_soon(
            spear, "invoke", "--url", served.url, "--task-name", "hello", "--function", "sleep", "--params", "[30]"
        )
        with trio.fail_after(20):
            while b'"RUNNING"' not in (await spear("executions", "--url", served.url, "--json")).stdout:
                await trio.sleep(0.1)
        served.process.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            while b"waiting for 1 running" not in served.stderr:
                await trio.sleep(0.05)
        assert b"press Ctrl-C again" in served.stderr
        served.process.send_signal(signal.SIGINT)
        with trio.fail_after(10):  # far less than the 60 s grace
            await served.process.wait()
        nursery.cancel_scope.cancel()
    assert b"again: stopping now" in served.stderr
    assert b"Traceback" not in served.stderr


async def test_json_logs_are_one_object_per_line(tmp_path: Path) -> None:
    config = 'listen = ["ws://127.0.0.1:0"]\ntoken = "s3cret"'
    async with spear_serve(tmp_path, config, "--log-format", "json") as served:
        wrong = await spear("health", "--url", served.url, "--token", "nope")
        assert wrong.returncode == 1
    lines = [json.loads(line) for line in served.stderr.decode().splitlines() if line.startswith("{")]
    assert lines and all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    refused = [line for line in lines if "failed authentication" in line["message"]]
    assert refused and refused[0]["level"] == "WARNING"
    assert all(not line.startswith(" ") for line in served.stderr.decode().splitlines())


async def test_top_once_prints_a_snapshot_of_the_tasks(node: Node) -> None:
    url = await _hello(node)
    done = await spear("top", "--once", "--url", url)
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode()
    assert "hello_agent" in text and "SERVING" in text and "p99 ms" in text and "queued" in text


async def test_on_a_terminal_a_slow_call_shows_a_spinner_with_its_execution_id(node: Node) -> None:
    import pty

    url = await _hello(node)
    controller, terminal = pty.openpty()
    try:
        done = await trio.run_process(
            [
                *SPEAR,
                "invoke",
                "--url",
                url,
                "--task-name",
                "hello_agent",
                "--function",
                "sleep",
                "--params",
                "[1.6]",
                "--execution-id",
                "exec-spin",
            ],
            capture_stdout=True,
            stderr=terminal,
            check=False,
        )
        os.set_blocking(controller, False)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except (BlockingIOError, OSError):
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
        os.close(terminal)
    assert done.returncode == 0, shown
    assert json.loads(done.stdout) == {"slept": 1.6}
    assert b"exec-spin: running" in shown


async def test_sigterm_lets_a_running_spear_invoke_get_its_result(tmp_path: Path) -> None:
    config = "\n".join(
        [
            'listen = ["ws://127.0.0.1:0"]',
            "[tasks.hello]",
            f"artifact = {{ location = {json.dumps(str(EXAMPLE_AGENT))} }}",
        ]
    )
    outcome: dict[str, subprocess.CompletedProcess[bytes]] = {}
    async with spear_serve(tmp_path, config) as served:

        async def invoke() -> None:
            outcome["invoke"] = await spear(
                "invoke", "--url", served.url, "--task-name", "hello", "--function", "sleep", "--params", "[2]"
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(invoke)
            with trio.fail_after(20):
                while b'"RUNNING"' not in (await spear("executions", "--url", served.url, "--json")).stdout:
                    await trio.sleep(0.05)
            served.process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            await served.process.wait()
    assert outcome["invoke"].returncode == 0, outcome["invoke"].stderr
    assert json.loads(outcome["invoke"].stdout) == {"slept": 2}
    assert served.process.returncode == 0
    assert b"drained: every call finished" in served.stderr

"""What a client may ask for: artifact sources, roots, commands, environment, WASM
settings. Each attack of issue 13 through a client of a running node."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

from spear_actors import ErrorCode, SpearError
from spear_actors.config import TaskDeclaration
from spear_actors.model import ArtifactSpec
from spear_actors.node import open_node
from spear_actors.policy import OperatorPolicy

from ..conftest import EXAMPLE_AGENT, fast_config
from ..runtimes.wasm_helpers import FIXTURES
from .conftest import PROBE, PolicyNode, probe_spec


async def denied(awaitable: object) -> SpearError:
    """The PERMISSION_DENIED *awaitable* raises (within 30 s: never a hang)."""
    with trio.fail_after(30), pytest.raises(SpearError) as info:
        await awaitable  # type: ignore[misc]
    assert info.value.code is ErrorCode.PERMISSION_DENIED, info.value
    return info.value


async def test_a_client_cannot_run_a_shell_on_a_system_file(policy_node: PolicyNode) -> None:
    async with policy_node() as (_, client):
        spec = {"location": "/etc/hostname", "config": {"command": ["sh", "-c", "head -3 /etc/passwd >&2; exit 1"]}}
        error = await denied(client.invoke("x", None, task_name="steal", artifact_spec=spec))
        assert "root:" not in repr(error.to_dict())
        error = await denied(client.invoke("x", None, task_name="whoami", artifact_spec={"location": "/"}))
        assert "artifact root" in error.message


async def test_client_commands_are_refused_unless_allowed(policy_node: PolicyNode, allowed: Path) -> None:
    async with policy_node() as (_, client):
        error = await denied(client.invoke("add", [1, 2], task_name="t", artifact_spec=probe_spec(command="id")))
        assert "command" in error.message
    only_python = {"client_commands": True, "allowed_commands": [sys.executable]}
    async with policy_node(**only_python) as (_, client):
        await denied(client.invoke("x", None, task_name="t", artifact_spec=probe_spec(command=["sh", "-c", "id"])))
        spec = probe_spec(command=[sys.executable, str(PROBE)])
        assert (await client.invoke("version", None, task_name="py", artifact_spec=spec))["result"] == "v1"


async def test_refusals_do_not_reveal_files(policy_node: PolicyNode, tmp_path: Path) -> None:
    outside = tmp_path / "secret.py"
    outside.write_text("print('secret')\n")
    unreadable = tmp_path / "unreadable.py"
    unreadable.write_text("")
    unreadable.chmod(0)
    async with policy_node() as (_, client):
        answers = []
        for path in (outside, tmp_path / "missing.py", unreadable, Path("/etc/hostname")):
            spec = {"location": str(path), "checksum": "0" * 64}
            error = await denied(client.invoke("x", None, task_name=f"t-{path.name}", artifact_spec=spec))
            answers.append(error.message.replace(str(path), "PATH"))
            assert "sha256" not in error.message and not {"actual", "expected"} & set(error.details)
        assert len(set(answers)) == 1, answers


async def test_paths_and_symlinks_may_not_leave_the_roots(policy_node: PolicyNode, allowed: Path) -> None:
    (allowed / "escape.py").symlink_to(EXAMPLE_AGENT)
    (allowed / "agent.py").write_bytes(EXAMPLE_AGENT.read_bytes())
    async with policy_node() as (_, client):
        for location in (str(allowed / "escape.py"), f"{allowed}/../allowed/../../{EXAMPLE_AGENT.name}"):
            await denied(client.invoke("add", [1, 2], task_name="t", artifact_spec={"location": location}))
        await denied(
            client.invoke(
                "add",
                [1, 2],
                task_name="cwd",
                artifact_spec={"location": str(allowed / "agent.py"), "config": {"working_directory": "/etc"}},
            )
        )
        spec = {"location": (allowed / "agent.py").as_uri()}
        assert (await client.invoke("add", [1, 2], task_name="ok", artifact_spec=spec))["result"] == 3


async def test_runtimes_and_sources_can_be_switched_off(policy_node: PolicyNode) -> None:
    wasm = {"artifact_type": "wasm", "location": str(FIXTURES / "add.wat"), "config": {"abi": "export"}}
    async with policy_node(runtimes=["process"], sources=["local"]) as (_, client):
        await denied(client.invoke("add", [1, 2], task_name="w", artifact_spec=wasm))
        inline = {"artifact_type": "process", "content": b"print()", "config": {}}
        await denied(client.invoke("add", [1, 2], task_name="i", artifact_spec=inline))
        remote = {"location": "http://127.0.0.1:9/x.py", "checksum": "0" * 64}
        await denied(client.invoke("add", [1, 2], task_name="h", artifact_spec=remote))


@pytest.mark.parametrize("name", ["LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "GLIBC_TUNABLES", "SECRET"])
async def test_loader_and_node_variables_are_refused(policy_node: PolicyNode, name: str) -> None:
    async with policy_node() as (_, client):
        error = await denied(
            client.invoke("environment", None, task_name="env", artifact_spec=probe_spec(env={name: "/tmp/x.so"}))
        )
        assert name in error.message


async def test_wasm_settings_may_only_lower_the_ceilings(policy_node: PolicyNode, allowed: Path) -> None:
    def spec(**config: object) -> dict[str, object]:
        return {"artifact_type": "wasm", "location": str(FIXTURES / "echo.wat"), "config": config}

    (allowed / "data").mkdir()
    async with policy_node(artifact_roots=[FIXTURES], wasm_preopen_roots=[allowed]) as (_, client):
        await denied(client.invoke("run", "x", task_name="etc", artifact_spec=spec(preopen_dir="/etc")))
        await denied(
            client.invoke(
                "run",
                "x",
                task_name="rw",
                artifact_spec=spec(preopen_dir=str(allowed / "data"), preopen_readonly=False),
            )
        )
        await denied(client.invoke("run", "x", task_name="mem", artifact_spec=spec(max_memory_bytes=4 * 1024**3)))
        await denied(client.invoke("run", "x", task_name="fuel", artifact_spec=spec(fuel=2**62)))
        await denied(client.invoke("run", "x", task_name="time", artifact_spec=spec(timeout_s=10**6)))
        await denied(client.invoke("run", "x", task_name="out", artifact_spec=spec(max_output_bytes=2**40)))
        ok = spec(preopen_dir=str(allowed / "data"), max_memory_bytes=1 << 20, fuel=10**6)
        assert (await client.invoke("run", "hi", task_name="ok", artifact_spec=ok))["result"] == "hi"


async def test_fuel_has_a_ceiling_when_the_client_sets_none(policy_node: PolicyNode) -> None:
    spin = {"artifact_type": "wasm", "location": str(FIXTURES / "loop.wat"), "config": {"abi": "export"}}
    async with policy_node(artifact_roots=[FIXTURES], wasm_max_fuel=1_000_000) as (_, client):
        with trio.fail_after(30), pytest.raises(SpearError) as info:
            await client.invoke("spin", None, task_name="spin", artifact_spec=spin, context={"timeout_ms": 600_000})
        assert info.value.code is ErrorCode.RESOURCE_EXHAUSTED and info.value.details["limit"] == "fuel"


async def test_one_task_cannot_hold_every_wasm_worker(policy_node: PolicyNode) -> None:
    spin = {"artifact_type": "wasm", "location": str(FIXTURES / "loop.wat"), "config": {"abi": "export"}}
    add = {"artifact_type": "wasm", "location": str(FIXTURES / "add.wat"), "config": {"abi": "export"}}
    policy = {"wasm_max_fuel": 2**62}
    async with policy_node(config={"wasm_workers": 4}, artifact_roots=[FIXTURES], **policy) as (node, client):
        spinning = []
        for _ in range(4):
            accepted = await client.invoke(
                "spin",
                None,
                task_name="spinner",
                artifact_spec=spin,
                execution_mode="ASYNC",
                policy={"max_instances": 4, "max_concurrency": 1},
                context={"timeout_ms": 120_000},
            )
            spinning.append(accepted["execution_id"])
        with trio.fail_after(60):
            while (await node.get_health())["running_executions"] < 2:
                await trio.sleep(0.05)
            # Two workers spin for the first task; the other task still gets one.
            response = await client.invoke("add", [2, 3], task_name="other", artifact_spec=add)
        assert response["result"] == 5
        for execution_id in spinning:
            await client.call("cancel_execution", {"execution_id": execution_id})


async def test_declared_tasks_are_the_operators(tmp_path: Path, no_leaked_processes: None) -> None:
    # Neither the path nor the command would be allowed from a client here.
    artifact = ArtifactSpec(location=str(PROBE), config={"command": [sys.executable, str(PROBE)]})
    config = fast_config(tmp_path, tasks=[TaskDeclaration("tool", artifact)], policy=OperatorPolicy(artifact_roots=[]))
    async with open_node(config) as node:
        assert (await node.invoke("version", None, task_name="tool"))["result"] == "v1"
        with pytest.raises(SpearError) as info:
            await node.invoke("version", None, task_name="copy", artifact_spec=probe_spec())
        assert info.value.code is ErrorCode.PERMISSION_DENIED

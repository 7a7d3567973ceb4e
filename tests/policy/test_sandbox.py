"""Agent processes run sandboxed: a minimal environment, resource limits, no
survivors after a stop or after the node is killed. Real agent processes throughout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

import spear_actors
from spear_actors.runtimes.sandbox import DEFAULT_AGENT_ENV

from ..conftest import ROOT, pids_with_env
from .conftest import PROBE, PolicyNode, alive, probe_spec, wait_gone


async def test_agents_see_only_the_allowlist_and_their_own_variables(
    policy_node: PolicyNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_CLOUD_KEY", "hunter2")
    monkeypatch.setenv("LANG", "C.UTF-8")
    async with policy_node() as (_, client):
        response = await client.invoke(
            "environment", None, task_name="env", artifact_spec=probe_spec(env={"GREETING": "hi"})
        )
    env = response["result"]
    assert "MY_CLOUD_KEY" not in env and "hunter2" not in env.values()
    assert env["GREETING"] == "hi" and env["LANG"] == "C.UTF-8"
    node_variables = {"SERVICE_ADDR", "SECRET", "SPEAR_INSTANCE_ID", "SPEAR_TASK_ID", "SPEAR_NODE_GUARD"}
    assert set(env) <= set(DEFAULT_AGENT_ENV) | {"GREETING"} | node_variables


async def test_agents_run_under_the_policy_limits(policy_node: PolicyNode) -> None:
    limits = {
        "agent_max_address_space_bytes": 3 * 1024**3,
        "agent_max_cpu_s": 600,
        "agent_max_open_files": 256,
        "agent_max_processes": 2048,
    }
    async with policy_node(**limits) as (_, client):
        response = await client.invoke("limits", None, task_name="limits", artifact_spec=probe_spec())
    assert response["result"] == {"as": 3 * 1024**3, "cpu": 600, "nofile": 256, "nproc": 2048, "core": 0}


async def test_default_limits_are_set(policy_node: PolicyNode) -> None:
    async with policy_node() as (_, client):
        response = await client.invoke("limits", None, task_name="limits", artifact_spec=probe_spec())
    result = response["result"]
    assert result["as"] == 4 * 1024**3 and result["cpu"] == 3600 and result["nofile"] == 1024 and result["core"] == 0


@pytest.mark.parametrize("new_session", [False, True], ids=["in-group", "own-session"])
async def test_children_of_an_agent_die_with_its_task(policy_node: PolicyNode, new_session: bool) -> None:
    async with policy_node() as (node, client):
        response = await client.invoke(
            "spawn", {"new_session": new_session}, task_name="spawner", artifact_spec=probe_spec()
        )
        child = response["result"]
        assert alive(child)
        await node.delete_task(response["task_id"], force=True)
        await wait_gone([child])


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
async def test_agents_can_run_as_another_user(policy_node: PolicyNode, tmp_path: Path) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    tmp_path.chmod(0o755)  # the agent reads its pinned copy under the data dir
    async with policy_node(agent_user="nobody") as (_, client):
        try:
            response = await client.invoke("identity", None, task_name="who", artifact_spec=probe_spec())
        except spear_actors.SpearError as exc:  # this machine hides the package from nobody
            pytest.skip(f"agent cannot start as nobody here: {exc.message[:200]}")
    assert response["result"] == {"uid": nobody.pw_uid, "gid": nobody.pw_gid, "groups": [nobody.pw_gid]} or (
        response["result"]["uid"] == nobody.pw_uid and response["result"]["groups"] in ([], [nobody.pw_gid])
    )


NODE_SCRIPT = """
import sys, trio
from pathlib import Path
from spear_actors import NodeConfig, open_node
from spear_actors.policy import OperatorPolicy

async def main():
    config = NodeConfig(
        listen=[sys.argv[1]], data_dir=Path(sys.argv[2]), agent_listen=sys.argv[3],
        policy=OperatorPolicy(artifact_roots=[Path(sys.argv[4])]),
    )
    async with open_node(config):
        print("ready", flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


async def test_agents_and_their_children_die_with_a_killed_node(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/node.sock"
    node = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-c",
            textwrap.dedent(NODE_SCRIPT),
            url,
            str(tmp_path / "data"),
            f"unix://{tmp_path}/a.sock",
            str(PROBE.parent),
        ],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert node.stdout is not None
        with trio.fail_after(30):
            assert b"ready" in await node.stdout.receive_some(100)
            async with spear_actors.connect(url) as client:
                in_group = await client.invoke("spawn", {}, task_name="a", artifact_spec=probe_spec())
                own_session = await client.invoke("spawn", {"new_session": True}, task_name="a")
                agent = (await client.invoke("pid", None, task_name="a"))["result"]
        survivors = [agent, in_group["result"], own_session["result"]]
        assert all(alive(pid) for pid in survivors)
        node.send_signal(signal.SIGKILL)
        await node.wait()
        await wait_gone(survivors)
        assert not pids_with_env(f"SPEAR_INSTANCE_ID={in_group['instance_id']}")
    finally:
        if node.returncode is None:
            node.kill()
        await node.wait()

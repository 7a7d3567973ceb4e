"""The optional per-instance cgroup v2: used where the machine delegates one to the
node, skipped (with a log line) where it does not. Real agents."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

import pytest

from .conftest import PolicyNode, alive, probe_spec, wait_gone

CGROUP_ROOT = Path("/sys/fs/cgroup")


def delegated_cgroup() -> Path | None:
    """A fresh cgroup v2 directory this test may use, if the machine has one."""
    if not (CGROUP_ROOT / "cgroup.controllers").is_file() or not os.access(CGROUP_ROOT, os.W_OK):
        return None
    own = (CGROUP_ROOT / Path("/proc/self/cgroup").read_text().split("::", 1)[-1].strip().lstrip("/")).parent
    parent = own / f"spear-test-{uuid.uuid4().hex[:8]}"
    try:
        parent.mkdir()
    except OSError:
        return None
    return parent


async def test_without_a_usable_cgroup_the_node_says_so_and_runs(
    policy_node: PolicyNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with policy_node(agent_cgroup=tmp_path, agent_cgroup_memory_bytes=1 << 28) as (_, client):
        response = await client.invoke("version", None, task_name="plain", artifact_spec=probe_spec())
    assert response["result"] == "v1"
    assert any("agent cgroups disabled" in record.getMessage() for record in caplog.records)


async def test_an_instance_cgroup_holds_and_kills_every_descendant(policy_node: PolicyNode) -> None:
    parent = delegated_cgroup()
    if parent is None:
        pytest.skip("no writable cgroup v2 hierarchy on this machine")
    try:
        async with policy_node(agent_cgroup=parent, agent_cgroup_pids=64) as (node, client):
            response = await client.invoke("spawn", {"new_session": True}, task_name="cg", artifact_spec=probe_spec())
            child = response["result"]
            groups = [path for path in parent.iterdir() if path.is_dir()]
            assert len(groups) == 1 and (groups[0] / "pids.max").read_text().strip() == "64"
            assert str(child) in (groups[0] / "cgroup.procs").read_text().split()
            await node.delete_task(response["task_id"], force=True)
            await wait_gone([child])
            assert not alive(child) and not [path for path in parent.iterdir() if path.is_dir()]
    finally:
        parent.rmdir()

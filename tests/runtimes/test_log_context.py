"""Log lines of the process runtime about one instance carry its ids as fields
(``extra``: what ``--log-format json`` prints), and a WASM trap's line the
execution's."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytest
import trio

from spear_actors import ErrorCode, SpearError
from spear_actors.serving import open_node

from ..conftest import AGENTS, ROOT, agent_spec, fast_config


async def test_instance_and_trap_lines_carry_their_ids(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, no_leaked_processes: None
) -> None:
    caplog.set_level(logging.DEBUG, logger="spear_actors.runtimes")
    wasm = {"location": str(ROOT / "tests/fixtures/wasm/add.wat"), "artifact_type": "wasm", "config": {"abi": "export"}}
    async with open_node(fast_config(tmp_path)) as node:
        first = await node.invoke("pid", None, task_name="busy", artifact_spec=agent_spec(AGENTS / "busy_agent.py"))
        os.kill(first["result"], signal.SIGKILL)
        with trio.fail_after(30):
            while not any(
                r.getMessage().startswith("instance ") and "failed" in r.getMessage() for r in caplog.records
            ):
                await trio.sleep(0.02)
        with pytest.raises(SpearError) as trap:
            await node.invoke("divmod", [1, 0], task_name="wasm", artifact_spec=wasm)
        assert trap.value.code is ErrorCode.FUNCTION_ERROR
    failed = next(r for r in caplog.records if r.getMessage().startswith("instance ") and "failed" in r.getMessage())
    assert failed.__dict__["instance_id"] == first["instance_id"] and failed.__dict__["task_id"] == first["task_id"]
    trapped = next(
        r for r in caplog.records if r.name.startswith("spear_actors.runtimes.wasm") and "trap" in r.getMessage()
    )
    assert trapped.__dict__["execution_id"] and trapped.__dict__["code"] == "FUNCTION_ERROR"
    assert trapped.__dict__["instance_id"] and trapped.__dict__["task_id"]

"""kill -9 of a real ``spear serve`` under load, and a restart on the same data dir."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

import spear_actors
from spear_actors import SpearError
from spear_actors.client import Client

from ..conftest import AGENTS, agent_spec, pids_with_env

SPEAR = [sys.executable, "-m", "spear_actors.cli"]


@asynccontextmanager
async def serving(data_dir: Path) -> AsyncIterator[tuple[trio.Process, Client]]:
    """A ``spear serve`` subprocess on *data_dir* and a client connected to it."""
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            lambda task_status: trio.run_process(
                [*SPEAR, "serve", "--listen", "ws://127.0.0.1:0", "--data-dir", str(data_dir)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                check=False,
                task_status=task_status,
            )
        )
        try:
            assert process.stdout is not None
            output = b""
            with trio.fail_after(30):
                while (url := re.search(rb"listening on (\S+)\n", output)) is None:
                    chunk = await process.stdout.receive_some(4096)
                    assert chunk, "spear serve exited before listening"
                    output += chunk
            async with spear_actors.connect(url.group(1).decode()) as client:
                yield process, client
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            with trio.move_on_after(30):
                await process.wait()
            if process.returncode is None:
                process.kill()


async def load_until_killed(
    client: Client, process: trio.Process, spec: dict[str, Any], path: Path, accepted: list[str]
) -> None:
    """ASYNC calls from 16 submitters (their acknowledged ids go to *accepted*); the
    node is killed with SIGKILL at a random moment once 50 more were acknowledged."""
    goal = len(accepted) + 50

    async def submit() -> None:
        while True:
            try:
                answer = await client.invoke(
                    "run", [str(path), 0], task_name="load", artifact_spec=spec, execution_mode="ASYNC"
                )
            except SpearError:
                return  # the node died under the call: it was never acknowledged
            accepted.append(answer["execution_id"])

    async with trio.open_nursery() as nursery:
        for _ in range(16):
            nursery.start_soon(submit)
        with trio.fail_after(60):
            while len(accepted) < goal:
                await trio.sleep(0.01)
        await trio.sleep(random.uniform(0, 0.3))
        process.kill()  # SIGKILL: no drain, no flush
        with trio.fail_after(30):
            await process.wait()
    assert process.returncode == -signal.SIGKILL


async def expect_records(client: Client, accepted: list[str]) -> None:
    """Every acknowledged ASYNC call has a record: finished, or failed by a restart."""
    for execution_id in accepted:
        record = await client.get_execution(execution_id)
        if record["status"] != "COMPLETED":
            assert record["status"] == "FAILED", record
            assert record["error"]["details"]["reason"] == "node_restarted"


async def test_sigkill_under_load_loses_no_accepted_call(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    runs = tmp_path / "runs"
    marker = f"kill9-{uuid.uuid4().hex}"
    spec = agent_spec(AGENTS / "counting_agent.py", env={"TEST_MARK": marker})
    policy = {"min_instances": 0, "max_instances": 2, "max_concurrency": 1, "max_pending": 10_000}
    accepted: list[str] = []
    try:
        async with serving(data_dir) as (process, client):
            first = await client.invoke("run", [str(runs), -1], task_name="counted", artifact_spec=spec, policy=policy)
            task_id = first["task_id"]
            # Finished: five ASYNC calls that ran to the end.
            for i in range(5):
                answer = await client.invoke(
                    "run",
                    [str(runs), i],
                    task_id=task_id,
                    execution_mode="ASYNC",
                    context={"execution_id": f"done-{i}"},
                )
                assert (await client.wait_execution(answer["execution_id"]))["status"] == "COMPLETED"
            # Running: both instances busy; queued: five more behind them.
            for i in range(2):
                await client.invoke(
                    "wait", [60], task_id=task_id, execution_mode="ASYNC", context={"execution_id": f"run-{i}"}
                )
            for i in range(5):
                await client.invoke(
                    "wait", [60], task_id=task_id, execution_mode="ASYNC", context={"execution_id": f"queued-{i}"}
                )
            # Queued too, but they asked for retries: they run again after the restart.
            for i in range(3):
                context = {"execution_id": f"retry-{i}", "max_retries": 1}
                await client.invoke(
                    "run", [str(runs), 100 + i], task_id=task_id, execution_mode="ASYNC", context=context
                )
            with trio.fail_after(30):
                while (await client.get_execution("run-1"))["status"] != "RUNNING" or (
                    await client.get_execution("run-0")
                )["status"] != "RUNNING":
                    await trio.sleep(0.05)

            await load_until_killed(client, process, spec, tmp_path / "load", accepted)
        # Twice more: restart, check what was acknowledged so far, load, kill at random.
        for cycle in range(2):
            async with serving(data_dir) as (process, client):
                await expect_records(client, accepted)
                if cycle == 0:  # the calls that asked for retries were submitted again
                    for i in range(3):
                        with trio.fail_after(30):
                            record = await client.wait_execution(f"retry-{i}")
                        assert record["status"] == "COMPLETED" and record["result"] == 2 * (100 + i), record
                await load_until_killed(client, process, spec, tmp_path / "load", accepted)

        async with serving(data_dir) as (process, client):
            for i in range(5):
                record = await client.get_execution(f"done-{i}", include_logs=True)
                assert record["status"] == "COMPLETED" and record["result"] == 2 * i
                assert f"ran {i}" in record["logs"]
            for execution_id in ["run-0", "run-1", *(f"queued-{i}" for i in range(5))]:
                with trio.fail_after(5):  # answered at once: no instance runs it any more
                    record = await client.wait_execution(execution_id)
                assert record["status"] == "FAILED", record
                assert record["error"]["details"]["reason"] == "node_restarted"
            await expect_records(client, accepted)
            # Each retried call ran once: queued when the node died, run after the restart.
            assert sorted(line for line in runs.read_text().splitlines() if line.startswith("10")) == [
                "100",
                "101",
                "102",
            ]
            # A finished execution_id is never run again: the stored result comes back.
            before = runs.read_text().splitlines()
            again = await client.invoke("run", [str(runs), 3], task_id=task_id, context={"execution_id": "done-3"})
            assert again["result"] == 6
            assert runs.read_text().splitlines() == before
            # The client-created task exists again, and its instances start on demand.
            tasks = {t["task_name"]: t["task_id"] for t in (await client.list_tasks())["tasks"]}
            assert tasks["counted"] == task_id
            fresh = await client.invoke("run", [str(runs), 7], task_id=task_id)
            assert fresh["result"] == 14 and runs.read_text().splitlines() == [*before, "7"]
            # A call cut short by the restart may be submitted again under its id: it runs.
            rerun = await client.invoke("run", [str(runs), 8], task_id=task_id, context={"execution_id": "queued-0"})
            assert rerun["result"] == 16
    finally:
        for pid in pids_with_env(marker):  # agents orphaned by the kill
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

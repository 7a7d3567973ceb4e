"""The execution store: SQLite retention, byte caps, identity, idempotency beyond memory."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
import trio

from spear_actors import ErrorCode, SpearError
from spear_actors.actors.executions import not_found
from spear_actors.actors.manager import TaskSeed
from spear_actors.model import ArtifactSpec, InstancePolicy
from spear_actors.node import open_node
from spear_actors.store import ExecutionRow, Retention, SqliteStore

from ..conftest import AGENTS, agent_spec, fast_config

COUNTING = agent_spec(AGENTS / "counting_agent.py")


def _row(
    i: int, status: str = "COMPLETED", result: bytes = b"\xa2ok", completed_at: float | None = None
) -> ExecutionRow:
    now = time.time()
    return ExecutionRow(
        f"e{i}", "t", "f", "ASYNC", status, created_at=now, completed_at=completed_at or now, result=result
    )


async def _write(store: SqliteStore, rows: list[ExecutionRow]) -> None:
    seq = 0
    for row in rows:
        seq = store.save(row)
    await store.committed(seq)
    # The writer prunes after a batch; one more commit means that prune is done.
    await store.committed(store.save(_row(10**6, status="RUNNING")))


async def test_disk_retention_by_count_keeps_the_newest_and_never_a_live_record(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path, Retention(max_records=10, prune_interval_s=3600))
    await store.open("node-x", 0)
    try:
        await _write(store, [_row(0, status="RUNNING"), *(_row(i) for i in range(1, 30))])
        assert await store.load("e0") is not None  # unfinished: never pruned
        assert await store.load("e1") is None
        assert (await store.load("e29")) is not None
        assert store.stats()["rows"] <= 11
    finally:
        await store.aclose()


async def test_disk_retention_by_bytes_and_by_age(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path, Retention(max_bytes=20_000, max_age_s=60, prune_interval_s=0))
    await store.open("node-x", 0)
    try:
        old = time.time() - 120
        await _write(store, [_row(0, completed_at=old), *(_row(i, result=b"x" * 1000) for i in range(1, 60))])
        assert await store.load("e0") is None  # past max_age_s
        assert await store.load("e1") is None  # oldest past the byte bound
        assert await store.load("e59") is not None
        assert store.stats()["bytes"] <= 20_000
    finally:
        await store.aclose()


async def test_a_data_dir_serves_one_node_at_a_time(tmp_path: Path) -> None:
    async with open_node(fast_config(tmp_path)):
        with pytest.raises(SpearError) as info:
            async with open_node(fast_config(tmp_path)):
                pass
        assert info.value.code is ErrorCode.FAILED_PRECONDITION
        assert "in use by another running node" in info.value.message


async def test_the_node_keeps_its_identity_across_restarts(tmp_path: Path) -> None:
    async with open_node(fast_config(tmp_path)) as node:
        first = (await node.get_health())["node_id"]
    async with open_node(fast_config(tmp_path)) as node:
        assert (await node.get_health())["node_id"] == first
    async with open_node(fast_config(tmp_path, node_id="node-explicit")) as node:
        assert (await node.get_health())["node_id"] == "node-explicit"  # the config wins, and is kept
    async with open_node(fast_config(tmp_path)) as node:
        assert (await node.get_health())["node_id"] == "node-explicit"


async def test_a_finished_id_beyond_the_memory_cache_is_not_run_again(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    async with open_node(fast_config(tmp_path, max_execution_records=2)) as node:
        for i in range(6):
            context = {"execution_id": f"id-{i}"}
            await node.invoke("run", [str(runs), i], task_name="c", artifact_spec=COUNTING, context=context)
        # id-0 left memory long ago; the store still has it.
        assert (await node.get_execution("id-0"))["result"] == 0
        assert (await node.wait_execution("id-0"))["status"] == "COMPLETED"
        again = await node.invoke("run", [str(runs), 0], task_name="c", context={"execution_id": "id-0"})
        assert again["result"] == 0
        assert runs.read_text().splitlines() == [str(i) for i in range(6)]
        with pytest.raises(SpearError) as info:
            await node.get_execution("never-existed")
        assert info.value.code is ErrorCode.NOT_FOUND


async def test_finished_records_are_listed_again_after_a_restart(tmp_path: Path) -> None:
    async with open_node(fast_config(tmp_path)) as node:
        ids = [
            (await node.invoke("run", [str(tmp_path / "runs"), i], task_name="c", artifact_spec=COUNTING))[
                "execution_id"
            ]
            for i in range(3)
        ]
    async with open_node(fast_config(tmp_path)) as node:
        listed = [r["execution_id"] for r in (await node.list_executions())["executions"]]
        assert listed == ids


async def test_a_result_over_the_per_record_cap_is_kept_as_a_marker(tmp_path: Path) -> None:
    for store in ("memory", "sqlite"):
        (tmp_path / store).mkdir()
        async with open_node(fast_config(tmp_path / store, store=store, max_result_bytes=1000)) as node:
            sync = await node.invoke("blob", 5000, task_name="b", artifact_spec=COUNTING)
            assert sync["result"] == b"x" * 5000  # the caller still gets all of it
            record = await node.get_execution(sync["execution_id"])
            assert record["status"] == "COMPLETED"
            assert record["result"] is None and record["result_dropped"]["size_bytes"] > 5000
            small = await node.invoke("blob", 10, task_name="b")
            assert (await node.get_execution(small["execution_id"]))["result"] == b"x" * 10


async def test_retained_results_are_bounded_in_bytes_node_wide(tmp_path: Path) -> None:
    config = fast_config(tmp_path, store="memory", max_retained_result_bytes=20_000)
    async with open_node(config) as node:
        ids = [
            (await node.invoke("blob", 4000, task_name="b", artifact_spec=COUNTING))["execution_id"] for _ in range(10)
        ]
        await node.wait_execution(ids[-1])
        assert (await node.get_stats())["node"]["retained_result_bytes"] <= 20_000
        with pytest.raises(SpearError) as info:
            await node.get_execution(ids[0])  # the oldest went first
        assert info.value.code is ErrorCode.NOT_FOUND
        assert (await node.get_execution(ids[-1]))["result"] == b"x" * 4000


async def test_a_records_logs_are_capped(tmp_path: Path) -> None:
    async with open_node(fast_config(tmp_path, max_log_bytes_per_record=10_000)) as node:
        response = await node.invoke("chatty", [100, 1000], task_name="l", artifact_spec=COUNTING)
        logs = (await node.get_execution(response["execution_id"], include_logs=True))["logs"]
        assert len(logs) == 10 + 1
        assert logs[-1].startswith("[spear] 90000 bytes of logs dropped")


async def test_an_async_call_is_acknowledged_once_its_record_is_on_disk(tmp_path: Path) -> None:
    # An ASYNC acknowledgement waits for the record's commit: once answered, a
    # fresh reader of the database file sees the record.
    async with open_node(fast_config(tmp_path)) as node:
        accepted = await node.invoke("wait", [0.01], task_name="w", artifact_spec=COUNTING, execution_mode="ASYNC")
        path = tmp_path / "data" / "state" / "spear.sqlite3"
        with sqlite3.connect(path) as db:
            found = db.execute(
                "SELECT status FROM executions WHERE execution_id = ?", (accepted["execution_id"],)
            ).fetchone()
        assert found is not None
        await node.wait_execution(accepted["execution_id"])


async def test_a_stored_task_whose_artifact_changed_is_not_restored(tmp_path: Path) -> None:
    same = tmp_path / "same.py"
    changed = tmp_path / "changed.py"
    for path in (same, changed):
        path.write_text((AGENTS / "counting_agent.py").read_text())
    async with open_node(fast_config(tmp_path)) as node:
        for name, path in (("same", same), ("changed", changed)):
            await node.declare_task(
                TaskSeed(name, "", ArtifactSpec(location=str(path)), InstancePolicy(), persist=True)
            )
        await node.declare_task(TaskSeed("declared", "", ArtifactSpec(location=str(same)), InstancePolicy()))
        before = {t["task_name"]: t["task_id"] for t in (await node.list_tasks())["tasks"]}
    changed.write_text(changed.read_text() + "\n# another version\n")
    async with open_node(fast_config(tmp_path)) as node:
        after = {t["task_name"]: t["task_id"] for t in (await node.list_tasks())["tasks"]}
    # The unchanged one is back under its id; the changed one would run other bytes
    # than it was created with, so it is not; a task not created by a client is not stored.
    assert after == {"same": before["same"]}


async def test_a_store_that_fails_answers_every_call(tmp_path: Path) -> None:
    async with open_node(fast_config(tmp_path)) as node:
        await node.invoke("run", [str(tmp_path / "runs"), 0], task_name="c", artifact_spec=COUNTING)
        db = sqlite3.connect(tmp_path / "data" / "state" / "spear.sqlite3")
        db.execute("DROP TABLE executions")  # the writer's next transaction fails
        db.commit()
        db.close()
        # The ASYNC call cannot be recorded: its caller hears so (not accepted, no hang).
        with pytest.raises(SpearError) as info:
            await node.invoke("wait", [0.01], task_name="c", execution_mode="ASYNC")
        assert info.value.code is ErrorCode.UNAVAILABLE and "execution store" in info.value.message
        # From then on, calls are refused at once, naming the failure.
        with pytest.raises(SpearError) as again:
            await node.invoke("wait", [0.01], task_name="c")
        assert again.value.code is ErrorCode.UNAVAILABLE and "execution store failed" in again.value.message
        assert (await node.get_stats())["node"]["store"]["failed"]


async def test_an_unusable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "state").write_text("a file where the store's directory should be")
    with pytest.raises(SpearError) as info:
        async with open_node(fast_config(tmp_path)):
            pass
    assert info.value.code is ErrorCode.FAILED_PRECONDITION
    assert "cannot open the execution store" in info.value.message


async def test_a_locked_database_holds_up_writes_not_the_node(tmp_path: Path) -> None:
    async with open_node(fast_config(tmp_path)) as node:
        await node.invoke("run", [str(tmp_path / "runs"), 0], task_name="c", artifact_spec=COUNTING)
        other = sqlite3.connect(tmp_path / "data" / "state" / "spear.sqlite3", isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # another process holds the file: the writer cannot write
        try:
            commits = (await node.get_stats())["node"]["store"]["commits"]
            # The loop is not held: SYNC calls run and answer while their writes wait.
            ids = [
                (await node.invoke("run", [str(tmp_path / "runs"), i], task_name="c"))["execution_id"]
                for i in range(1, 21)
            ]
            assert (await node.get_health())["status"] == "SERVING"
            # The writer waits for the lock (and says so), it has not given up.
            with trio.fail_after(30):
                while not (await node.get_stats())["node"]["store"]["locked"]:
                    await trio.sleep(0.05)
            store = (await node.get_stats())["node"]["store"]
            assert store["commits"] == commits and store["failed"] is None
        finally:
            other.execute("ROLLBACK")
            other.close()
        # Once the lock is gone the writer catches up: every record reaches the disk.
        with trio.fail_after(30):
            while (await node.get_stats())["node"]["store"]["backlog"]:
                await trio.sleep(0.05)
        assert (await node.get_stats())["node"]["store"]["failed"] is None
    reader = sqlite3.connect(tmp_path / "data" / "state" / "spear.sqlite3")
    try:
        stored = {
            execution_id
            for (execution_id,) in reader.execute(
                f"SELECT execution_id FROM executions WHERE status = 'COMPLETED' AND execution_id IN "
                f"({', '.join('?' * len(ids))})",
                ids,
            )
        }
    finally:
        reader.close()
    assert stored == set(ids)


async def test_a_watch_of_many_ids_not_in_memory_reads_the_store_in_a_few_batches(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    async with open_node(fast_config(tmp_path, max_execution_records=2)) as node:
        for i in range(4):
            context = {"execution_id": f"id-{i}"}
            await node.invoke("run", [str(runs), i], task_name="c", artifact_spec=COUNTING, context=context)
        unknown = [f"unknown-{i}" for i in range(3_000)]
        reads_before = (await node.get_stats())["node"]["store"]["reads"]
        seen: list[dict[str, object]] = []

        async def sink(item: dict[str, object]) -> None:
            seen.append(item)

        # id-0 and id-1 left memory: the store has them; the 3,000 others are unknown.
        answer = await node.watch_executions(["id-0", *unknown, "id-1"], sink)
        reads = (await node.get_stats())["node"]["store"]["reads"] - reads_before

    assert answer == {"count": 3_002}
    by_id = {item["execution_id"]: item for item in seen}
    assert len(seen) == len(by_id) == 3_002
    assert by_id["id-0"]["status"] == by_id["id-1"]["status"] == "COMPLETED"
    assert all(by_id[i]["error"] == not_found(i).to_dict() for i in unknown)
    # Gathered into batched reads (a watch sends 500 ids per manager message), not one per id.
    assert 1 <= reads <= 8


@pytest.mark.parametrize("count", [1, 31, 32, 33, 64, 100])
async def test_a_batch_of_any_size_is_written_whole_and_the_last_write_of_a_row_wins(
    tmp_path: Path, count: int
) -> None:
    # rows go 32 to a statement, the rest in one more: every size comes back whole
    store = SqliteStore(tmp_path, Retention(prune_interval_s=3600))
    await store.open("node-x", 0)
    try:
        seq = 0
        for i in range(count):
            seq = store.save(_row(i, status="RUNNING"))
            seq = store.save(_row(i, result=b"\xa1" + bytes([97 + i % 26])))  # the same row, ended
        await store.committed(seq)
        for i in range(count):
            loaded = await store.load(f"e{i}")
            assert loaded is not None and loaded.status == "COMPLETED"
            assert loaded.result == b"\xa1" + bytes([97 + i % 26])
        assert await store.load(f"e{count}") is None
        assert store.stats()["rows"] == count
    finally:
        await store.aclose()

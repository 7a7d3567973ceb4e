"""Client-chosen execution ids and hostile invoke requests through a forwarding node,
in a real three-node cluster on a real etcd."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import trio

from spear_actors import SpearError, connect
from spear_actors.cluster import id_owner, open_registry
from spear_actors.errors import ErrorCode

from ..conftest import agent_spec
from .cluster_helpers import cluster_config, eventually, node_info
from .cluster_nodes import cluster_health, open_cluster, url_of
from .etcd_server import EtcdServer

SPEAR = [sys.executable, "-m", "spear_actors.cli"]


async def _spear(*args: str) -> tuple[int, str, str]:
    done = await trio.run_process([*SPEAR, *args], capture_stdout=True, capture_stderr=True, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_client_chosen_execution_ids_are_found_through_any_node(
    etcd: EtcdServer, prefix: str, tmp_path: Path
) -> None:
    async with (
        open_cluster(tmp_path, etcd.url, prefix, ["node-a", "node-b", "node-c"]) as (a, b, c),
        connect(url_of(a)) as on_a,
        connect(url_of(b)) as on_b,
        connect(url_of(c)) as on_c,
    ):
        await on_a.invoke("add", [1, 2], task_name="calc", artifact_spec=agent_spec())
        # chosen by the client, run on node-a (the task's owner) through node-b
        done = await on_b.invoke("add", [2, 3], task_name="calc", context={"execution_id": "order-42"})
        assert done["execution_id"] == "order-42" and id_owner("order-42") is None
        record = await on_c.get_execution("order-42")
        assert record["status"] == "COMPLETED" and record["result"] == 5
        assert (await on_b.wait_execution("order-42"))["result"] == 5
        # a long one, cancelled and watched through the two nodes that do not hold it
        await on_a.invoke(
            "sleep", [30], task_name="sleeper", artifact_spec=agent_spec(), execution_mode="ASYNC",
            context={"execution_id": "job-7"},
        )  # fmt: skip
        await eventually(lambda: on_c.get_execution("job-7"), lambda r: r["status"] == "RUNNING")
        async with on_b.watch_executions(["job-7", "order-42"]) as notices:
            cancelled = await on_c.cancel_execution("job-7", reason="enough")
            assert cancelled["status"] == "CANCELLED"
            seen = {item["execution_id"]: item["status"] async for item in notices}
        assert seen == {"job-7": "CANCELLED", "order-42": "COMPLETED"}
        # an id no node knows is this node's NOT_FOUND, after asking the others
        with pytest.raises(SpearError) as unknown:
            await on_c.get_execution("no-such-job")
        assert unknown.value.code is ErrorCode.NOT_FOUND
        with pytest.raises(SpearError) as unknown_wait:
            await on_b.wait_execution("no-such-job")
        assert unknown_wait.value.code is ErrorCode.NOT_FOUND
        # the CLI names each call's execution itself: its id is found through another node
        code, out, err = await _spear(
            "invoke", "--url", url_of(a), "--task-name", "calc", "--function", "add", "--params", "[3, 4]",
            "--mode", "async", "--json",
        )  # fmt: skip
        assert code == 0, err
        execution_id = json.loads(out)["execution_id"]
        code, out, err = await _spear("wait", execution_id, "--url", url_of(c), "--json")
        assert code == 0, err
        assert json.loads(out)["result"] == 7
        code, out, err = await _spear("status", execution_id, "--url", url_of(b), "--json")
        assert code == 0 and json.loads(out)["status"] == "COMPLETED", err


async def test_a_forwarding_node_checks_what_it_reads_and_relays_the_rest(
    etcd: EtcdServer, prefix: str, tmp_path: Path
) -> None:
    async with (
        open_cluster(tmp_path, etcd.url, prefix, ["node-a", "node-b"]) as (a, b),
        connect(url_of(a)) as on_a,
        connect(url_of(b)) as on_b,
    ):
        made = await on_a.invoke("add", [1, 2], task_name="calc", artifact_spec=agent_spec())
        # another spelling of the kind of call is parsed in full, then routed
        spelt = await on_b.call(
            "invoke", {"invocation_type": "existing_task", "task_id": made["task_id"], "function_name": "add",
                       "parameters": [5, 5]},
        )  # fmt: skip
        assert spelt["result"] == 10 and id_owner(spelt["execution_id"]) == "node-a"
        bad = [
            ["not", "a", "map"],
            {"task_name": 7, "function_name": "add"},
            {"task_name": "calc"},  # no function
            {"task_name": "calc", "function_name": "add", "invocation_type": "SOMETIMES"},
            {"invocation_type": "EXISTING_TASK", "function_name": "add"},  # no task id
            {"invocation_type": "EXISTING_TASK", "task_id": ["x"], "function_name": "add"},
        ]
        for params in bad:
            with pytest.raises(SpearError) as refused:
                await on_b.call("invoke", params)
            assert refused.value.code is ErrorCode.INVALID_ARGUMENT, params
        # what the forwarding node does not read, the owner checks
        with pytest.raises(SpearError) as owner_refused:
            await on_b.invoke("add", [1, 2], task_name="calc", execution_mode="SOMETIMES")
        assert owner_refused.value.code is ErrorCode.INVALID_ARGUMENT
        # and the node serving others carries on
        assert (await on_b.invoke("add", [2, 2], task_name="calc"))["result"] == 4


async def test_a_lookup_that_cannot_ask_every_live_node_is_unavailable(
    etcd: EtcdServer, prefix: str, tmp_path: Path
) -> None:
    async with (
        open_cluster(tmp_path, etcd.url, prefix, ["node-a", "node-b"]) as (a, b),
        connect(url_of(a)) as on_a,
        connect(url_of(b)) as on_b,
    ):
        await on_a.invoke("add", [1, 2], task_name="calc", artifact_spec=agent_spec(), context={"execution_id": "mine"})
        # a live member of the cluster (its lease is kept) that no one can reach
        async with open_registry(cluster_config(etcd.url, prefix), node_info("node-ghost")):
            await eventually(
                lambda: cluster_health(url_of(b)), lambda h: "node-ghost" in {n["node_id"] for n in h["nodes"]}
            )
            assert (await on_b.get_execution("mine"))["result"] == 3  # node-a answered: found
            with pytest.raises(SpearError) as unknown:
                await on_b.get_execution("nobody-has-it")
            assert unknown.value.code is ErrorCode.UNAVAILABLE
            assert unknown.value.details["unreachable"] == ["node-ghost"]

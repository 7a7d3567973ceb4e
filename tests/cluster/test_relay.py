"""Calls relayed by a forwarding node (no task waiting there) in a real cluster on a
real etcd: results and errors pass through with their codes; the client's cancel,
its deadline and its leaving reach the owner; an owner killed mid-call answers
UNAVAILABLE; a draining node waits for the calls it relays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from spear_actors import SpearError, connect
from spear_actors.client import build_invoke_request
from spear_actors.cluster import id_owner
from spear_actors.errors import ErrorCode

from ..conftest import agent_spec
from .cluster_helpers import WAIT_S, eventually
from .cluster_nodes import open_cluster, served_member, url_of
from .etcd_server import EtcdServer


async def _running(client: Any, execution_id: str) -> None:
    await eventually(lambda: client.get_execution(execution_id), lambda r: r["status"] == "RUNNING")


async def test_results_and_errors_are_relayed_with_their_codes(etcd: EtcdServer, prefix: str, tmp_path: Path) -> None:
    async with (
        open_cluster(tmp_path, etcd.url, prefix, ["node-a", "node-b"]) as (a, b),
        connect(url_of(a)) as on_a,
        connect(url_of(b)) as on_b,
    ):
        made = await on_a.invoke("add", [1, 2], task_name="calc", artifact_spec=agent_spec())
        # many at once on one client connection, by id: each gets its own answer
        answers: dict[int, Any] = {}

        async def add(n: int) -> None:
            answers[n] = (await on_b.invoke("add", [n, 1], task_id=made["task_id"]))["result"]

        async with trio.open_nursery() as nursery:
            for n in range(40):
                nursery.start_soon(add, n)
        assert answers == {n: n + 1 for n in range(40)}
        done = await on_b.invoke("add", [2, 3], task_id=made["task_id"])
        assert done["result"] == 5 and id_owner(done["execution_id"]) == "node-a"
        # the owner's errors, with their codes and details
        with pytest.raises(SpearError) as failed:
            await on_b.invoke("fail", ["relayed boom"], task_id=made["task_id"])
        assert failed.value.code is ErrorCode.FUNCTION_ERROR and "relayed boom" in failed.value.message
        with pytest.raises(SpearError) as invalid:  # routed on its fields, refused by the owner's full parse
            await on_b.invoke("add", [1, 1], task_id=made["task_id"], execution_mode="SOMETIMES")
        assert invalid.value.code is ErrorCode.INVALID_ARGUMENT
        # a relayed get_execution too
        record = await on_b.get_execution(done["execution_id"])
        assert record["status"] == "COMPLETED" and record["result"] == 5


async def test_client_cancel_and_client_leaving_cancel_the_owners_execution(
    etcd: EtcdServer, prefix: str, tmp_path: Path
) -> None:
    async with (
        open_cluster(tmp_path, etcd.url, prefix, ["node-a", "node-b"]) as (a, b),
        connect(url_of(a)) as on_a,
        connect(url_of(b)) as on_b,
    ):
        made = await on_a.invoke("add", [1, 2], task_name="sleeper", artifact_spec=agent_spec())
        task_id = made["task_id"]
        # the client cancels its call: the cancel passes to the owner
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: on_b.invoke("sleep", [30], task_id=task_id, context={"execution_id": "c-1"}))
                await _running(on_a, "c-1")
                scope.cancel()
        await eventually(lambda: on_a.get_execution("c-1"), lambda r: r["status"] == "CANCELLED")
        assert (await on_b.invoke("add", [1, 1], task_id=task_id))["result"] == 2  # b relays on

        # the client's connection goes away mid-call: the owner's call is cancelled
        async with connect(url_of(b)) as leaving:
            outcome: list[SpearError] = []

            async def call() -> None:
                try:
                    await leaving.invoke("sleep", [30], task_id=task_id, context={"execution_id": "c-2"})
                except SpearError as exc:
                    outcome.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call)
                await _running(on_a, "c-2")
                await leaving.connection.aclose("client leaves")
            assert [e.code for e in outcome] == [ErrorCode.UNAVAILABLE]
        await eventually(lambda: on_a.get_execution("c-2"), lambda r: r["status"] == "CANCELLED")
        assert (await on_b.invoke("add", [2, 2], task_id=task_id))["result"] == 4


async def test_the_clients_deadline_travels_and_is_enforced(etcd: EtcdServer, prefix: str, tmp_path: Path) -> None:
    async with (
        open_cluster(tmp_path, etcd.url, prefix, ["node-a", "node-b"]) as (a, b),
        connect(url_of(a)) as on_a,
        connect(url_of(b)) as on_b,
    ):
        made = await on_a.invoke("add", [1, 2], task_name="slow", artifact_spec=agent_spec())
        params = build_invoke_request("sleep", [30], {"task_id": made["task_id"], "context": {"execution_id": "d-1"}})
        with pytest.raises(SpearError) as late:
            await on_b.call("invoke", params, timeout=1.0)
        assert late.value.code is ErrorCode.DEADLINE_EXCEEDED
        # the owner ended it too (the deadline travelled with the relayed call)
        record = await eventually(lambda: on_a.get_execution("d-1"), lambda r: r["status"] != "RUNNING")
        assert record["status"] in ("CANCELLED", "FAILED", "TIMEOUT")
        assert (await on_b.invoke("add", [3, 3], task_id=made["task_id"]))["result"] == 6


async def test_a_draining_node_waits_for_the_calls_it_relays(etcd: EtcdServer, prefix: str, tmp_path: Path) -> None:
    async with (
        open_cluster(tmp_path, etcd.url, prefix, ["node-a", "node-b"]) as (a, b),
        connect(url_of(a)) as on_a,
        connect(url_of(b)) as on_b,
    ):
        made = await on_a.invoke("add", [1, 2], task_name="drained", artifact_spec=agent_spec())
        answers: list[Any] = []

        async def call() -> None:
            answers.append(await on_b.invoke("sleep", [1.0], task_id=made["task_id"], context={"execution_id": "g-1"}))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await _running(on_a, "g-1")
            assert await b.drain(grace=WAIT_S)
        assert [answer["result"] for answer in answers] == [{"slept": 1.0}]


async def test_an_owner_killed_mid_call_answers_unavailable(etcd: EtcdServer, prefix: str, tmp_path: Path) -> None:
    async with (
        open_cluster(tmp_path, etcd.url, prefix, ["node-b"]) as (b,),
        served_member(tmp_path, "node-k", etcd.url, prefix, seen_by=b) as served,
        connect(url_of(b)) as on_b,
    ):
        async with connect(served.url) as on_k:
            made = await on_k.invoke("add", [1, 2], task_name="doomed", artifact_spec=agent_spec())
            assert (await on_b.invoke("add", [2, 2], task_id=made["task_id"]))["result"] == 4  # relayed to k
            outcome: list[SpearError] = []

            async def call() -> None:
                try:
                    await on_b.invoke("sleep", [30], task_id=made["task_id"], context={"execution_id": "k-1"})
                except SpearError as exc:
                    outcome.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call)
                await _running(on_k, "k-1")
                served.process.kill()  # kill -9 of the owner, mid-call
                await served.process.wait()
        assert [e.code for e in outcome] == [ErrorCode.UNAVAILABLE]
        assert "node-k" in outcome[0].message and outcome[0].details == {"owner": "node-k"}
        # node-b serves on
        assert (await on_b.get_health())["status"]

"""The method table: its three faces (gateway, client, docs) follow it, and every
param is validated by name over a real websocket connection."""

from __future__ import annotations

import inspect
import math

import pytest

from spear_actors import ErrorCode, SpearError
from spear_actors.api import BY_NAME, MAX_LIST_LIMIT, MAX_WATCH_IDS, METHODS, method_list_markdown
from spear_actors.client import Client, connect
from spear_actors.node import Node

from ..conftest import ROOT


def test_protocol_md_lists_exactly_the_table() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text()
    assert method_list_markdown() in text


def test_every_method_has_a_node_implementation_and_a_client_method() -> None:
    for method in METHODS:
        assert callable(getattr(Node, method.node_method)), method.name
        for name in (method.name, *method.aliases):
            assert callable(getattr(Client, name)), name
        if method.params:
            signature = inspect.signature(getattr(Client, method.name))
            assert [p.py_name for p in method.params] == list(signature.parameters)[1:]


async def _invalid(client: Client, method: str, params: object) -> str:
    with pytest.raises(SpearError) as caught:
        await client.call(method, params)
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT, caught.value
    return caught.value.message


async def test_every_number_is_checked_and_the_error_names_the_param(node: Node) -> None:
    async with connect(str(node.endpoints[0])) as client:
        message = await _invalid(client, "wait_execution", {"execution_id": "x", "timeout_ms": -1})
        assert "timeout_ms" in message and "-1" in message
        message = await _invalid(client, "wait_execution", {"execution_id": "x", "timeout_ms": math.nan})
        assert "timeout_ms" in message
        message = await _invalid(client, "wait_execution", {"execution_id": "x", "timeout_ms": 2**63})
        assert "timeout_ms" in message
        message = await _invalid(client, "list_tasks", {"limit": MAX_LIST_LIMIT + 1})
        assert "limit" in message and "1,000" in message
        message = await _invalid(client, "list_executions", {"limit": 0})
        assert "limit" in message
        message = await _invalid(client, "list_executions", {"limit": True})
        assert "limit must be int, got bool" in message
        message = await _invalid(client, "get_task", {"task_id": "t", "execution_limit": 1.5})
        assert "execution_limit" in message
        message = await _invalid(client, "get_execution", {"execution_id": 7})
        assert "execution_id must be str, got int" in message
        message = await _invalid(client, "get_execution", {})
        assert "execution_id is required" in message
        message = await _invalid(client, "get_health", {"verbose": True})
        assert "unknown params ['verbose']" in message
        message = await _invalid(client, "list_executions", {"status_filter": ["RUNNING", 3]})
        assert "status_filter[1]" in message


async def test_a_watch_has_a_documented_maximum_of_ids(node: Node) -> None:
    async with connect(str(node.endpoints[0])) as client:
        with pytest.raises(SpearError) as caught:
            async with client.watch_executions([f"exec-{i}" for i in range(MAX_WATCH_IDS + 1)]) as items:
                async for _ in items:
                    pass
        assert caught.value.code is ErrorCode.INVALID_ARGUMENT
        assert "execution_ids" in caught.value.message and "10,000" in caught.value.message
        # the node serves the next request normally
        assert (await client.get_health())["status"] == "SERVING"


async def test_generated_client_methods_call_the_node(node: Node) -> None:
    async with connect(str(node.endpoints[0])) as client:
        assert (await client.health())["status"] == "SERVING"
        assert (await client.list_tasks(limit=5))["tasks"] == []
        with pytest.raises(SpearError) as caught:
            await client.wait_execution("exec-none", timeout=0.5)
        assert caught.value.code is ErrorCode.NOT_FOUND
        async with client.watch_executions(["exec-none"]) as items:
            records = [item async for item in items]
        assert records[0]["error"]["code"] == "NOT_FOUND"


async def test_embedded_wait_execution_refuses_a_negative_timeout(node: Node) -> None:
    with pytest.raises(SpearError) as caught:
        await node.wait_execution("x", timeout=-1)
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT and "timeout" in caught.value.message


def test_aliases_resolve_to_their_method() -> None:
    assert BY_NAME["health"] is BY_NAME["get_health"]

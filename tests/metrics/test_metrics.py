"""Prometheus metrics: a running node's endpoint, scraped over HTTP and parsed with
prometheus_client's own parser."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from spear_actors import ErrorCode, SpearError
from spear_actors.client import connect
from spear_actors.metrics import MAX_LABEL_SETS, NodeMetrics
from spear_actors.serving import open_node

from ..conftest import agent_spec, fast_config


def _samples(text: str) -> list[Sample]:
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def _value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert found, (name, labels)
    return sum(found)


async def test_a_running_node_is_scraped_and_parsed(tmp_path: Path, no_leaked_processes: None) -> None:
    config = fast_config(tmp_path, listen=["ws://127.0.0.1:0"], metrics_listen="http://127.0.0.1:0")
    async with open_node(config) as node:
        assert node.metrics_url is not None and node.metrics_url.endswith("/metrics")
        async with connect(str(node.endpoints[0])) as client:
            for n in range(3):
                await client.invoke("add", [n, 1], task_name="calc", artifact_spec=agent_spec())
            with pytest.raises(SpearError):
                await client.invoke("fail", {"message": "x"}, task_name="calc")
            async with httpx.AsyncClient() as http:
                response = await http.get(node.metrics_url)
                missing = await http.get(node.metrics_url.replace("/metrics", "/nope"))
        assert response.status_code == 200 and missing.status_code == 404
        assert response.headers["content-type"].startswith("text/plain")
        samples = _samples(response.text)
        assert _value(samples, "spear_invocations_total", task="calc", function="add", code="OK") == 3
        assert _value(samples, "spear_invocations_total", task="calc", function="fail", code="FUNCTION_ERROR") == 1
        assert _value(samples, "spear_invocation_duration_seconds_count", task="calc") == 4
        assert _value(samples, "spear_execution_duration_seconds_count", task="calc") == 3
        assert _value(samples, "spear_tasks") == 1
        assert _value(samples, "spear_instances", task="calc") >= 1
        assert _value(samples, "spear_instances_by_state", state="READY") >= 1
        assert _value(samples, "spear_instances_by_state", state="CREATING") == 0
        assert _value(samples, "spear_running_executions") == 0
        assert _value(samples, "spear_client_connections") == 1
        assert _value(samples, "spear_up") == 1
        assert _value(samples, "spear_client_connections", listener=str(node.endpoints[0])) == 1


def test_client_chosen_names_cannot_grow_the_label_sets_without_bound() -> None:
    metrics = NodeMetrics()
    for n in range(MAX_LABEL_SETS + 500):
        metrics.invoked(f"task-{n}", "f", "OK", 0.001, 0.5)
    samples = _samples(
        "\n".join(line for line in _exposition(metrics).splitlines() if line.startswith(("#", "spear_invocations")))
        + "\n"
    )
    tasks = {s.labels["task"] for s in samples if s.name == "spear_invocations_total"}
    assert len(tasks) == MAX_LABEL_SETS + 1 and "_other" in tasks
    assert _value(samples, "spear_invocations_total", task="_other") == 500


def _exposition(metrics: NodeMetrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


async def test_a_bad_metrics_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpearError) as caught:
        async with open_node(fast_config(tmp_path, metrics_listen="ftp://x")):
            pass
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT and "metrics_listen" in caught.value.message

"""The metrics recorded where things happen: cold starts, instance failures and
restarts, artifact fetches and cache hits, WASM traps, bytes per listener. Each is
provoked on a real node (real agents, real wasmtime, a real websocket client), then
scraped and parsed."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from spear_actors import ErrorCode, SpearError
from spear_actors.client import connect
from spear_actors.serving import open_node

from ..conftest import AGENTS, ROOT, agent_spec, fast_config

BUSY = agent_spec(AGENTS / "busy_agent.py")
WASM = {"location": str(ROOT / "tests/fixtures/wasm/add.wat"), "artifact_type": "wasm", "config": {"abi": "export"}}


async def _scrape(url: str) -> list[Sample]:
    async with httpx.AsyncClient() as http:
        text = (await http.get(url)).text
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def _value(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


async def test_runtime_artifact_and_gateway_metrics(tmp_path: Path, no_leaked_processes: None) -> None:
    copy = tmp_path / "agent.py"
    copy.write_bytes((AGENTS / "busy_agent.py").read_bytes())
    config = fast_config(tmp_path, listen=["ws://127.0.0.1:0"], metrics_listen="http://127.0.0.1:0")
    async with open_node(config) as node, connect(str(node.endpoints[0])) as client:
        assert node.metrics_url is not None
        # a cold start, then a failure (the agent killed) and the restart that replaces it
        first = await client.invoke("pid", None, task_name="busy", artifact_spec=BUSY)
        os.kill(first["result"], signal.SIGKILL)
        with trio.fail_after(30):
            while True:
                try:
                    second = await client.invoke("pid", None, task_name="busy")
                except SpearError as exc:
                    assert exc.code is ErrorCode.INSTANCE_FAILED
                    continue
                if second["result"] != first["result"]:
                    break
                await trio.sleep(0.05)
        # a file: copied into the cache once, then found there for a second task
        spec = agent_spec(copy)
        for name in ("copied", "found-in-cache"):
            await client.invoke("pid", None, task_name=name, artifact_spec=spec)
        # WASM: a cold start, and a trap (division by zero)
        assert (await client.invoke("add", [1, 2], task_name="wasm", artifact_spec=WASM))["result"] == 3
        with pytest.raises(SpearError) as trap:
            await client.invoke("divmod", [1, 0], task_name="wasm")
        assert trap.value.code is ErrorCode.FUNCTION_ERROR
        samples = await _scrape(node.metrics_url)
    assert _value(samples, "spear_cold_starts_total", runtime="process") >= 4
    assert _value(samples, "spear_cold_start_duration_seconds_count", runtime="process") >= 4
    assert _value(samples, "spear_cold_starts_total", runtime="wasm") == 1
    assert _value(samples, "spear_instance_failures_total", runtime="process") >= 1
    reasons = {s.labels["reason"] for s in samples if s.name == "spear_instance_failures_total" and s.value}
    assert reasons <= {"exited", "connection_lost"}, reasons
    assert _value(samples, "spear_instance_restarts_total", runtime="process") >= 1
    assert _value(samples, "spear_artifact_fetches_total", source="local", outcome="OK") >= 2
    assert _value(samples, "spear_artifact_cache_hits_total", source="local") >= 1
    assert _value(samples, "spear_wasm_traps_total", kind="integer_division_by_zero") == 1
    listener = str(node.endpoints[0])
    assert _value(samples, "spear_received_bytes_total", listener=listener) > 500
    assert _value(samples, "spear_sent_bytes_total", listener=listener) > 500

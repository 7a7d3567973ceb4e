"""Agent output costs the node linear time and bounded space (issue 12 item 4)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spear_actors import SpearError
from spear_actors.runtimes.output import LineSplitter, capped_log

from .conftest import PROBE, PolicyNode


@given(st.lists(st.binary(max_size=300), max_size=30), st.integers(min_value=1, max_value=40))
def test_splitting_matches_a_plain_split_with_lines_cut(chunks: list[bytes], max_line: int) -> None:
    splitter = LineSplitter(max_line, lines_per_second=10**9)
    lines = [line for chunk in chunks for line in splitter.feed(chunk, 0.0)] + list(splitter.finish())
    data = b"".join(chunks)
    expected = data.split(b"\n")
    if expected[-1] == b"":
        expected.pop()
    assert len(lines) == len(expected)
    for line, raw in zip(lines, expected, strict=True):
        kept = raw[:max_line].decode(errors="replace").rstrip("\r")
        assert line.startswith(kept.translate({c: "\ufffd" for c in (*range(0x20), 0x7F) if c != 9}))
        assert ("[truncated" in line) == (len(raw) > max_line)


def test_a_line_without_end_keeps_only_its_head() -> None:
    splitter = LineSplitter(100)
    chunk = b"x" * 65536
    for _ in range(200):  # 12.5 MiB of one line: nothing grows past the cap
        assert list(splitter.feed(chunk, 0.0)) == []
    (line,) = splitter.finish()
    assert line == "x" * 100 + f" [truncated {200 * 65536 - 100} bytes]"


def test_a_flood_of_lines_is_counted_not_logged() -> None:
    splitter = LineSplitter(100, lines_per_second=10)
    first = list(splitter.feed(b"\n" * 100_000, 0.0))
    assert len(first) == 10
    later = list(splitter.feed(b"late\n", 5.0))  # tokens refilled: the drop is reported first
    assert later == [f"[{100_000 - 10} lines dropped: agent output over 10 lines/s]", "late"]


def test_control_characters_cannot_forge_log_lines() -> None:
    (line,) = LineSplitter(100).feed(b"ok\r2026-01-01 CRITICAL forged\x1b[2K\n", 0.0)
    assert "\r" not in line and "\x1b" not in line


def test_execution_logs_are_capped() -> None:
    lines = list(capped_log(["a" * 10] * 100, max_line=5, max_total=70))
    assert lines[:-1] == ["aaaaa [truncated 5 characters]"] * 2
    assert lines[-1] == "[98 log lines dropped: over the 70 bytes kept per execution]"


async def test_a_real_agent_flooding_its_output(
    policy_node: PolicyNode, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger="spear_actors.agent")
    async with policy_node(agent_max_line_bytes=1000) as (_, client):
        response = await client.invoke(
            "shout",
            {"no_newline_bytes": 8 * 1024 * 1024, "empty_lines": 300_000},
            task_name="loud",
            artifact_spec={"location": str(PROBE)},
        )
        assert response["result"] == "shouted"
        assert (await client.invoke("version", None, task_name="loud"))["result"] == "v1"
    messages = [record.getMessage() for record in caplog.records if record.name.startswith("spear_actors.agent.")]
    long_lines = [m for m in messages if "[truncated" in m]
    assert long_lines and all(len(m) < 1100 for m in long_lines)
    assert any("lines dropped" in m for m in messages)
    assert len(messages) < 300_000 // 2


async def test_execution_logs_of_a_real_agent_are_capped(policy_node: PolicyNode) -> None:
    async with policy_node(max_execution_log_bytes=64 * 1024, agent_max_line_bytes=500) as (_, client):
        response = await client.invoke(
            "chatter", {"lines": 2000, "size": 1000}, task_name="chatty", artifact_spec={"location": str(PROBE)}
        )
        with pytest.raises(SpearError) as info:
            await client.invoke("chatter_and_fail", {"lines": 2000, "size": 1000}, task_name="chatty")
    for logs in (response["logs"], info.value.details["logs"]):
        assert sum(len(line) + 1 for line in logs) <= 64 * 1024 + 200
        assert all(len(line) <= 540 for line in logs[:-1])
        assert "log lines dropped" in logs[-1]


async def test_instances_run_the_bytes_their_task_was_created_from(policy_node: PolicyNode, allowed: Path) -> None:
    agent = allowed / "pinned_agent.py"
    shutil.copy(PROBE, agent)
    async with policy_node() as (node, client):
        first = await client.invoke("version", None, task_name="pinned", artifact_spec={"location": str(agent)})
        assert first["result"] == "v1"
        agent.write_text(PROBE.read_text().replace('return "v1"', 'return "edited"'))
        with pytest.raises(Exception):  # noqa: B017 - the instance dies; the exact error is not the point
            await client.invoke("die", None, task_name="pinned")
        again = await client.invoke("version", None, task_name="pinned")
        assert again["result"] == "v1" and again["instance_id"] != first["instance_id"]
        fresh = await client.invoke("version", None, task_name="new", artifact_spec={"location": str(agent)})
        assert fresh["result"] == "edited"
        assert node is not None

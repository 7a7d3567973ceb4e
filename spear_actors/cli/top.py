"""``spear top``: a live table of the node's tasks from ``get_stats`` and
``get_health`` (rich), or one snapshot with ``--once``."""

from __future__ import annotations

import argparse
from typing import Any

import trio
from rich.console import Console
from rich.live import Live
from rich.table import Table

from ..client import Client
from ..errors import SpearError

__all__ = ["run_top"]


def _finished(counts: dict[str, int]) -> int:
    return sum(n for status, n in counts.items() if status not in ("PENDING", "RUNNING"))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


_MAX_ROWS = 50
"""Tasks shown (and asked for their queues) per refresh."""


async def _queues(client: Client, stats: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(queued, running) per task id, for the tasks shown."""
    queues = {}
    for task_id in list(stats["tasks"])[:_MAX_ROWS]:
        try:
            task = await client.get_task(task_id)
        except SpearError:
            continue  # deleted meanwhile
        queues[task_id] = (task["pending"], task["running"])
    return queues


def render(
    health: dict[str, Any],
    stats: dict[str, Any],
    rates: dict[str, float | None],
    queues: dict[str, tuple[int, int]],
) -> Table:
    """The table for one refresh; *rates* are calls/s per task id (None: not yet
    known), *queues* (queued, running) per task id."""
    table = Table(
        title=(
            f"node {health.get('node_id', '?')}  {health['status']}  up {health['uptime_s']:.0f} s  "
            f"tasks {health['tasks']}  instances {health['instances']}  "
            f"running {health['running_executions']}  queued {health['pending_executions']}"
        ),
        title_justify="left",
    )
    for column in ("task", "instances", "queued", "running", "finished", "calls/s", "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "task" else "right")
    shown = sorted(stats["tasks"].items(), key=lambda item: item[1]["task_name"])[:_MAX_ROWS]
    for task_id, task in shown:
        rate = rates.get(task_id)
        queued, running = queues.get(task_id, (None, None))
        table.add_row(
            task["task_name"],
            str(task["instances"]),
            "-" if queued is None else str(queued),
            "-" if running is None else str(running),
            str(_finished(task["counts"])),
            "-" if rate is None else f"{rate:.1f}",
            _ms(task["latency_ms"]["p50"]),
            _ms(task["latency_ms"]["p99"]),
        )
    return table


async def run_top(client: Client, args: argparse.Namespace) -> None:
    """Refresh every ``--interval`` seconds until Ctrl-C; ``--once``: one snapshot."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a pipe has no width: do not cut task names at 80
    health, stats = await client.get_health(), await client.get_stats()
    if args.once or not console.is_terminal:
        console.print(render(health, stats, {}, await _queues(client, stats)))
        return
    previous = {task_id: _finished(task["counts"]) for task_id, task in stats["tasks"].items()}
    last = trio.current_time()
    with Live(render(health, stats, {}, await _queues(client, stats)), console=console, auto_refresh=False) as live:
        while True:
            await trio.sleep(args.interval)
            health, stats = await client.get_health(), await client.get_stats()
            now = trio.current_time()
            rates: dict[str, float | None] = {}
            for task_id, task in stats["tasks"].items():
                done = _finished(task["counts"])
                before = previous.get(task_id)
                rates[task_id] = None if before is None else (done - before) / (now - last)
                previous[task_id] = done
            last = now
            live.update(render(health, stats, rates, await _queues(client, stats)), refresh=True)

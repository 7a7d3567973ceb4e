"""A real ``spear serve`` in a subprocess, for tests of the CLI and of the node as
hostile clients see it."""

from __future__ import annotations

import re
import resource
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

SPEAR = [sys.executable, "-m", "spear_actors.cli"]


@dataclass
class ServedNode:
    """A running ``spear serve``: its process, its first endpoint, what it printed."""

    process: trio.Process
    url: str
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)


async def _pump(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
    async for chunk in stream:
        into.extend(chunk)


def with_nofile(limit: int) -> Callable[[], None]:
    """A preexec_fn that sets RLIMIT_NOFILE (soft and hard) of the child."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


@asynccontextmanager
async def spear_serve(
    tmp_path: Path, config: str, *args: str, preexec_fn: Callable[[], None] | None = None
) -> AsyncIterator[ServedNode]:
    """Run ``spear serve --config <config>`` until the block ends (then SIGTERM and
    wait); the block starts once the node prints its endpoint."""
    config_file = tmp_path / "node.toml"
    config_file.write_text(config)
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            lambda task_status: trio.run_process(
                [*SPEAR, "serve", "--config", str(config_file), "--data-dir", str(tmp_path / "data"), *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                check=False,
                preexec_fn=preexec_fn,
                task_status=task_status,
            )
        )
        assert process.stdout is not None and process.stderr is not None
        node = ServedNode(process, "")
        nursery.start_soon(_pump, process.stderr, node.stderr)
        with trio.fail_after(30):
            while (match := re.search(rb"listening on (\S+)", node.stdout)) is None:
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    raise AssertionError(f"spear serve exited: {node.stderr.decode()}")
                node.stdout.extend(chunk)
        node.url = match.group(1).decode()
        nursery.start_soon(_pump, process.stdout, node.stdout)
        try:
            yield node
        finally:
            if process.returncode is None:
                process.terminate()
            with trio.move_on_after(20):
                await process.wait()
            if process.returncode is None:
                process.kill()

"""An optional cgroup v2 per agent instance: memory and CPU for the agent and all its
descendants together, and a kill that reaches every one of them.

The operator delegates a cgroup v2 directory to the node (policy ``agent_cgroup``,
e.g. one made by systemd with ``Delegate=yes``); each instance gets a child
directory there, joined by the agent in the child between fork and exec, so nothing
it starts can run outside it. At stop, after the process-group kill, ``cgroup.kill``
(Linux 5.14+; else a SIGKILL to every listed process, repeated until none is left)
ends whatever is left, and the directory is removed. Where the directory is not a
usable cgroup v2 (cgroup v1 machines, no delegation), the runtime logs why once and
runs without: docs/security.md says what is enforced then.

Blocking file-system code: the runtime runs it in a worker thread.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

__all__ = ["InstanceCgroup", "cgroup_problem"]

_CPU_PERIOD_US: Final = 100_000


def cgroup_problem(parent: Path) -> str | None:
    """Why *parent* cannot hold instance cgroups (None if it can). Enables the memory,
    cpu and pids controllers for its children on the way."""
    if not (parent / "cgroup.controllers").is_file():
        return f"{parent} is not a cgroup v2 directory"
    if not os.access(parent, os.W_OK):
        return f"{parent} is not writable by the node"
    available = set((parent / "cgroup.controllers").read_text().split())
    wanted = [name for name in ("memory", "cpu", "pids") if name in available]
    try:
        enabled = set((parent / "cgroup.subtree_control").read_text().split())
        missing = [name for name in wanted if name not in enabled]
        if missing:
            (parent / "cgroup.subtree_control").write_text(" ".join(f"+{name}" for name in missing))
    except OSError as exc:
        return f"cannot enable controllers in {parent}: {exc.strerror or exc}"
    return None


class InstanceCgroup:
    """The cgroup of one agent instance."""

    def __init__(self, parent: Path, instance_id: str) -> None:
        self.path = parent / f"spear-{instance_id}"

    def create(self, memory_bytes: int, cpus: float, pids: int) -> None:
        """Make the directory and set its limits (0: no limit of that kind)."""
        self.path.mkdir(mode=0o755)
        if memory_bytes > 0:
            (self.path / "memory.max").write_text(str(memory_bytes))
            if (self.path / "memory.swap.max").exists():  # no swapping past the limit
                (self.path / "memory.swap.max").write_text("0")
        if cpus > 0:
            (self.path / "cpu.max").write_text(f"{max(1000, int(cpus * _CPU_PERIOD_US))} {_CPU_PERIOD_US}")
        if pids > 0:
            (self.path / "pids.max").write_text(str(pids))

    def joiner(self) -> Callable[[], None]:
        """For the child between fork and exec: move itself into this cgroup."""
        procs = os.fsencode(self.path / "cgroup.procs")

        def join() -> None:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)

        return join

    def add(self, pid: int) -> None:
        """Move *pid* into this cgroup (from the node's side)."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def members(self) -> list[int]:
        """Pids in the cgroup now."""
        try:
            return [int(word) for word in (self.path / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def kill_all(self, patience: float = 5.0) -> None:
        """SIGKILL every process in the cgroup, then remove it."""
        kill_file = self.path / "cgroup.kill"
        deadline = time.monotonic() + patience
        while True:
            if kill_file.exists():
                try:
                    kill_file.write_text("1")
                except OSError:
                    pass
            for pid in self.members():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
            time.sleep(0.01)

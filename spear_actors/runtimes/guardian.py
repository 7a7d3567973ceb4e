"""Agent processes die with the node, even when the node is killed with SIGKILL.

``PR_SET_PDEATHSIG`` is no help here: it fires when the *thread* that forked the
child exits, and trio forks from worker threads that come and go; nor does it
reach the processes an agent starts. Instead, a tiny guardian process (started
with the first agent, one per process runtime) reads the process-group ids of the
live agents from a pipe. When the pipe reaches end-of-file (the node exited, however
it died) it SIGKILLs every group still registered, then every process whose
environment carries this node's guard token (descendants that left their agent's
process group keep it unless they scrubbed their environment). The guardian forks
away from the node at start, so it is not a child the node must reap (and outlives
it by design); it ends by itself once the pipe is closed.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterable
from typing import Final

import trio

__all__ = ["GUARD_VARIABLE", "Guardian", "kill_marked"]

log = logging.getLogger(__name__)

GUARD_VARIABLE: Final = "SPEAR_NODE_GUARD"
"""Environment variable every agent of a node starts with (value: the node's token)."""

_PROGRAM: Final = r"""
import os, signal, sys
if os.fork():
    os._exit(0)  # the node reaps this parent at once; the guardian is nobody's child
groups = set()
for line in sys.stdin.buffer:
    word = line.strip()
    try:
        if word.startswith(b"-"):
            groups.discard(int(word[1:]))
        elif word:
            groups.add(int(word))
    except ValueError:
        pass
for group in groups:
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass
needle = sys.argv[1].encode() + b"\0"
me = os.getpid()
for entry in os.listdir("/proc"):
    if entry.isdigit() and int(entry) != me:
        try:
            with open("/proc/" + entry + "/environ", "rb") as f:
                found = (b"\0" + f.read()).find(b"\0" + needle) >= 0
            if found:
                os.kill(int(entry), signal.SIGKILL)
        except OSError:
            pass
"""


def kill_marked(variable: str, value: str) -> int:
    """SIGKILL every process whose environment has ``variable=value``; return how many
    were signalled. Blocking (reads /proc): run it in a thread."""
    needle = f"\0{variable}={value}\0".encode()
    me = os.getpid()
    killed = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = b"\0" + f.read()
            if needle in environ or environ.endswith(needle[:-1]):
                os.kill(int(entry), signal.SIGKILL)
                killed += 1
        except OSError:
            continue
    return killed


class Guardian:
    """The guardian process of one process runtime (see the module docstring)."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(16)
        """This node's guard token (the value of GUARD_VARIABLE in every agent)."""
        self._process: trio.Process | None = None
        self._lock = trio.Lock()
        self._send_lock = trio.Lock()
        self._broken = False

    async def _ensure(self) -> trio.Process | None:
        # Shielded: a cancellation between the spawn and the reap of the forking parent
        # would leave a zombie child behind.
        with trio.CancelScope(shield=True):
            process = await self._start()
        return process

    async def _start(self) -> trio.Process | None:
        async with self._lock:
            if self._process is None and not self._broken:
                try:
                    self._process = await trio.lowlevel.open_process(
                        [sys.executable, "-I", "-S", "-c", _PROGRAM, f"{GUARD_VARIABLE}={self.token}"],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        env={},
                        start_new_session=True,  # no terminal signals: it must outlive the node
                    )
                    await self._process.wait()  # the forking parent; the guardian lives on
                except OSError as exc:
                    self._broken = True
                    log.warning("agent guardian cannot start (%s): agents will not die with a killed node", exc)
            return self._process

    async def _send(self, line: str) -> None:
        process = await self._ensure()
        if process is None or process.stdin is None:
            return
        try:
            with trio.CancelScope(shield=True):  # a half-written line would garble the next
                async with self._send_lock:
                    await process.stdin.send_all(line.encode())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            if not self._broken:
                self._broken = True
                log.warning("agent guardian is gone: agents will not die with a killed node")

    async def register(self, group: int) -> None:
        """Kill process group *group* if the node dies before :meth:`unregister`."""
        await self._send(f"{group}\n")

    async def unregister(self, group: int) -> None:
        """*group* has been stopped and reaped: forget it."""
        await self._send(f"-{group}\n")

    async def aclose(self) -> None:
        """End the guardian: it kills whatever is still registered or marked, then exits."""
        process = self._process
        self._process = None
        if process is not None and process.stdin is not None:
            with trio.CancelScope(shield=True):
                await process.stdin.aclose()

    def environment(self) -> Iterable[tuple[str, str]]:
        """What an agent's environment must carry for the guardian to find its strays."""
        return [(GUARD_VARIABLE, self.token)]

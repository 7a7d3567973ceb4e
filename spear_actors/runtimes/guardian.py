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
import time
from collections.abc import Callable, Iterable
from typing import Final

import trio

__all__ = ["GUARD_VARIABLE", "Guardian", "kill_marked", "read_environ"]

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


_MID_EXEC_PATIENCE: Final = 2.0
"""How long :func:`kill_marked` keeps re-reading processes whose environment read empty."""
_PF_KTHREAD: Final = 0x00200000


def read_environ(pid: int) -> bytes | None:
    """The raw environment of *pid* (``/proc/<pid>/environ``); None if the process
    may be inside ``execve`` (nothing to read yet); OSError if gone."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        environ = f.read()
    if not environ and _may_be_mid_exec(pid):
        return None
    return environ


def _may_be_mid_exec(pid: int) -> bool:
    """Whether a process whose environment read empty may just be inside ``execve``:
    its command line reads empty too (the kernel sets both up together), and it is
    neither a zombie nor a kernel thread (which always read empty)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if f.read(1):
                return False  # a running program that has an empty environment
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] not in (b"Z", b"X") and not int(fields[6]) & _PF_KTHREAD


def kill_marked(
    variable: str,
    value: str,
    *,
    patience: float = _MID_EXEC_PATIENCE,
    read: Callable[[int], bytes | None] = read_environ,
) -> int:
    """SIGKILL every process whose environment has ``variable=value``; return how many
    were signalled. Blocking (reads /proc): run it in a thread.

    Two races are closed. A process inside ``execve`` has already closed its
    close-on-exec descriptors (so the parent that started it with ``subprocess``
    has returned, and may have told the node its pid) before the kernel has set up
    its new environment, which until then reads *empty*: such processes are read
    again until they show an environment or end (up to *patience* seconds; on a
    busy machine that window lasted longer than a whole stop, and the child survived
    its task). And a marked process may fork while the scan runs: after any kill
    the whole scan is repeated, until one finds nothing more to kill."""
    needle = f"\0{variable}={value}\0".encode()
    me = os.getpid()
    deadline = time.monotonic() + patience
    killed = 0
    candidates: list[int] | None = None  # None: every process
    while True:
        found, unsure = _scan(needle, me, candidates, read)
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        if found:
            candidates = None  # what they forked before dying may be anywhere
        elif unsure and time.monotonic() < deadline:
            candidates = unsure
        else:
            return killed
        time.sleep(0.005)


def _scan(
    needle: bytes, me: int, candidates: list[int] | None, read: Callable[[int], bytes | None]
) -> tuple[list[int], list[int]]:
    """(marked pids, pids whose environment read empty but may be mid-exec)."""
    if candidates is None:
        try:
            candidates = [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
        except OSError:
            return [], []
    found: list[int] = []
    unsure: list[int] = []
    for pid in candidates:
        if pid == me:
            continue
        try:
            raw = read(pid)
        except OSError:
            continue
        if raw is None:
            unsure.append(pid)
            continue
        environ = b"\0" + raw
        if needle in environ or environ.endswith(needle[:-1]):
            found.append(pid)
    return found, unsure


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

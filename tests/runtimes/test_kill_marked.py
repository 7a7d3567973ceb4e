"""kill_marked: the stop of an instance kills every process carrying its marker,
including one caught inside execve (its environment not readable yet) and what a
marked process forks while the scan runs. Real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from spear_actors.runtimes.guardian import kill_marked, read_environ

_SLEEPER = "import time\nwhile True: time.sleep(1)\n"


def _gone(process: subprocess.Popen[bytes], seconds: float = 10) -> bool:
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return False
    return True


def _marked(marker: str, code: str = _SLEEPER) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", code], env={**os.environ, "SPEAR_TEST_MARK": marker}, start_new_session=True
    )


def test_a_process_caught_inside_execve_is_read_again_and_killed() -> None:
    marker = f"mid-exec-{os.getpid()}-{time.monotonic_ns()}"
    child = _marked(marker)
    reads = {"empty": 0}

    def first_read_mid_exec(pid: int) -> bytes | None:
        # what /proc shows between the close of close-on-exec descriptors (when
        # subprocess returns) and the kernel's setup of the new environment
        if pid == child.pid and reads["empty"] == 0:
            reads["empty"] += 1
            return None
        return read_environ(pid)

    assert kill_marked("SPEAR_TEST_MARK", marker, read=first_read_mid_exec) == 1
    assert reads["empty"] == 1 and _gone(child)


def test_what_a_marked_process_forks_during_the_scan_is_killed_too() -> None:
    marker = f"forker-{os.getpid()}-{time.monotonic_ns()}"
    # a marked process that keeps starting marked children (each in its own session)
    forker = _marked(
        marker,
        "import subprocess, sys, time\n"
        "while True:\n"
        f"    subprocess.Popen([sys.executable, '-c', {_SLEEPER!r}], start_new_session=True)\n"
        "    time.sleep(0.02)\n",
    )
    time.sleep(0.5)
    kill_marked("SPEAR_TEST_MARK", marker)
    assert _gone(forker)
    deadline = time.monotonic() + 10
    survivors = [0]
    while time.monotonic() < deadline:
        survivors = [pid for pid in _pids() if _has_marker(pid, marker) and not _zombie(pid)]
        if not survivors:
            break
        time.sleep(0.05)
    assert survivors == []


def test_nothing_marked_costs_one_scan() -> None:
    start = time.monotonic()
    assert kill_marked("SPEAR_TEST_MARK", f"nobody-{time.monotonic_ns()}") == 0
    assert time.monotonic() - start < 5  # no waiting for anything: one pass over /proc


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _has_marker(pid: int, marker: str) -> bool:
    try:
        return f"SPEAR_TEST_MARK={marker}".encode() in (read_environ(pid) or b"")
    except OSError:
        return False


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True

"""Test agent that reports what its sandbox lets it see and do."""

import os
import resource
import signal
import subprocess
import sys

from spear_actors.agent import Agent, log

agent = Agent("probe")

_CHILD = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: time.sleep(1)\n"


@agent.function
def environment():
    """The agent's whole environment."""
    return dict(os.environ)


@agent.function
def limits():
    """Soft limits: address space, CPU seconds, open files, processes, core size."""
    kinds = {"as": resource.RLIMIT_AS, "cpu": resource.RLIMIT_CPU, "nofile": resource.RLIMIT_NOFILE}
    kinds.update(nproc=resource.RLIMIT_NPROC, core=resource.RLIMIT_CORE)
    return {name: resource.getrlimit(kind)[0] for name, kind in kinds.items()}


@agent.function
def identity():
    """uid and gid the agent runs as."""
    return {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}


@agent.function
def spawn(new_session=False):
    """Start a child that ignores SIGTERM (optionally in its own session); its pid."""
    child = subprocess.Popen([sys.executable, "-c", _CHILD], start_new_session=new_session)
    return child.pid


@agent.function
def pid():
    return os.getpid()


@agent.function
def shout(no_newline_bytes, empty_lines):
    """Write a long line without a newline, then many empty lines, to stdout."""
    out = sys.stdout.buffer
    chunk = b"x" * 65536
    for _ in range(no_newline_bytes // len(chunk)):
        out.write(chunk)
    out.write(b"\n" + b"\n" * empty_lines + b"done\n")
    out.flush()
    return "shouted"


@agent.function
def chatter(lines, size):
    """Log *lines* lines of *size* characters into the execution's logs."""
    for i in range(lines):
        log(f"{i:06d}" + "y" * size)
    return lines


@agent.function
def chatter_and_fail(lines, size):
    """Log like chatter, then raise."""
    chatter(lines, size)
    raise RuntimeError("after chatter")


@agent.function
def die():
    os.kill(os.getpid(), signal.SIGKILL)


@agent.function
def version():
    return "v1"


if __name__ == "__main__":
    agent.run()

"""Functions for fault and concurrency tests."""

import os
import time

from spear_actors.agent import Agent, cancelled

agent = Agent()


@agent.function
def pid():
    return os.getpid()


@agent.function
def spin(seconds):
    """Busy, non-cooperative work: ignores cancellation."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return "spun"


@agent.function
def wait(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end and not cancelled():
        time.sleep(0.005)
    return "cancelled" if cancelled() else "waited"


@agent.function
async def async_wait(seconds):
    import asyncio

    await asyncio.sleep(seconds)
    return "waited"


@agent.function
def double(x):
    return 2 * x


@agent.function
def record(path, value):
    """Append *value* to a file (to count how often a function really ran)."""
    with open(path, "a") as out:
        out.write(f"{value}\n")
    time.sleep(0.05)
    return value


@agent.function
def produce(n, path):
    """Stream 0..n-1, writing how far the producer got to *path*."""
    for i in range(n):
        with open(path, "w") as out:
            out.write(str(i))
        yield i


@agent.function
def fail_midway(n):
    yield from range(n)
    raise RuntimeError(f"failed after {n} items")


@agent.function
async def async_count(n):
    for i in range(n):
        yield {"i": i}


@agent.function
def ticking(n, seconds):
    """Stream n items, one every *seconds* (cooperatively cancellable)."""
    for i in range(n):
        if cancelled():
            return
        time.sleep(seconds)
        yield i


@agent.function
def quit_now():
    """A function that calls sys.exit(): the caller must still get an answer."""
    import sys

    sys.exit(3)


@agent.function
def huge(n_bytes):
    return b"x" * n_bytes


@agent.function
def whoami():
    from spear_actors.agent import context

    return context()


if __name__ == "__main__":
    agent.run()

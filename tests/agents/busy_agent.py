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


if __name__ == "__main__":
    agent.run()

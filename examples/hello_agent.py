"""Example agent: a few functions served by a process instance.

The node runs this file with SERVICE_ADDR and SECRET set; see README.md.
"""

import time

from spear_actors.agent import Agent, cancelled, log

agent = Agent("hello")


@agent.function
def echo(**params):
    """Return the parameters unchanged."""
    return params


@agent.function
def add(a, b):
    """Add two numbers."""
    return a + b


@agent.function
def sleep(seconds):
    """Sleep (cooperatively cancellable), then say how long."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not cancelled():
        time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
    return {"slept": seconds}


@agent.function
def fail(message="boom"):
    """Raise an error: the caller gets FUNCTION_ERROR with the traceback."""
    log(f"about to fail with {message!r}")
    raise ValueError(message)


@agent.function
def count(n):
    """Stream the numbers 0..n-1."""
    yield from range(n)
    return {"counted": n}


if __name__ == "__main__":
    agent.run()

"""An agent that waits to dial back while the file named by ``$START_GATE`` exists
(a start that is slow to dial back, on demand). Self-contained: the node runs a
pinned copy of this file, away from the other test agents."""

import os
import time

from spear_actors.agent import Agent, cancelled

agent = Agent()


@agent.function
def pid():
    return os.getpid()


@agent.function
def wait(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end and not cancelled():
        time.sleep(0.005)
    return "cancelled" if cancelled() else "waited"


if __name__ == "__main__":
    gate = os.environ.get("START_GATE", "")
    while gate and os.path.exists(gate):
        time.sleep(0.01)
    agent.run()

"""busy_agent's functions; the agent waits to dial back while the file named by
``$START_GATE`` exists (a start that is slow to dial back, on demand)."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from busy_agent import agent

if __name__ == "__main__":
    gate = os.environ.get("START_GATE", "")
    while gate and os.path.exists(gate):
        time.sleep(0.01)
    agent.run()

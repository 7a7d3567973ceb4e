"""An agent that ignores cancel messages (to test the kill-and-replace path)."""

import time

from spear_actors.agent import Agent


class DeafAgent(Agent):
    def _cancel(self, message):  # never confirms, never stops the work
        pass


agent = DeafAgent()


@agent.function
def block(seconds):
    time.sleep(seconds)
    return "done"


@agent.function
def ticks(n):
    for i in range(n):
        time.sleep(0.01)
        yield i


@agent.function
def hello():
    return "hello"


agent.run()

"""An agent with big results and big arguments (for the agent link's liveness tests)."""

from spear_actors.agent import Agent

agent = Agent()


@agent.function
def big(n):
    return b"x" * n


@agent.function
def size(data):
    return len(data)


agent.run()

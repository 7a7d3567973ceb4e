"""An agent that dials back with the wrong secret."""

from spear_actors.agent import Agent

agent = Agent()


@agent.function
def add(a, b):
    return a + b


agent.run(secret="not-the-secret")

"""An agent with a thousand functions: its hello must still fit the node's 8 KiB."""

from spear_actors.agent import Agent

agent = Agent()
for i in range(1000):
    agent.function(name=f"function_number_{i:04d}")(lambda i=i: i)

agent.run()

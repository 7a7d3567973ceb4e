"""An agent whose functions report what the SDK tells them about their own call."""

from spear_actors.agent import Agent, cancelled, context, log

agent = Agent()


@agent.function
def note(text):
    log(text)
    return {"context": context(), "cancelled": cancelled()}


@agent.function
async def anote(text):
    log(text)
    return {"context": context(), "cancelled": cancelled()}


if __name__ == "__main__":
    agent.run()

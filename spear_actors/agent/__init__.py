"""The agent SDK: what runs inside a process instance.

Write functions, register them, run::

    from spear_actors.agent import Agent, log

    agent = Agent()

    @agent.function
    def add(a, b):
        return a + b

    @agent.function("shout")
    async def loud(text):
        log("shouting")            # goes to the execution's logs
        return text.upper()

    @agent.function
    def count(n):                  # a generator is a streaming function
        yield from range(n)

    if __name__ == "__main__":
        agent.run()

Parameters: a map is passed as keyword arguments, a list as positional
arguments, nil as no argument, anything else as the one argument.

The node starts this program with ``SERVICE_ADDR`` and ``SECRET`` in its
environment; :meth:`Agent.run` dials back, proves the secret and serves
``execute`` requests until the node says goodbye or goes away. Start-up is kept
light on purpose (stdlib + msgpack; asyncio is loaded only if an ``async def``
function is registered), because every cold start pays for it.

Threads: the main thread reads the connection and answers pings at once, so a
busy function never makes the agent look dead. A plain function first runs on
that reader thread itself (no hand-off: the cheap case of a short function); a
watchdog hands reading to a new thread when one runs over 2-4 ms, and that
function's later calls go to worker threads, as do generators streaming their
items; coroutines and async generators run on one asyncio loop in its own
thread. Cancelling a coroutine cancels its task; a plain function
cannot be interrupted, so it is abandoned: the node gets CANCELLED at once, the
function's eventual result is dropped, and :func:`cancelled` turns True so a
cooperative function can stop early.

Inside, the agent drives the same sans-IO protocol core as the node
(:mod:`spear_actors.protocol.core`), so the rules cannot drift between the two; see
:mod:`.link` for its threads.
"""

from __future__ import annotations

from .agent import Agent
from .calls import cancelled, context, log

__all__ = ["Agent", "cancelled", "context", "log"]

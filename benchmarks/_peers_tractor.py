"""``peers.py`` driver: tractor's ``portal.run`` to one sub-actor (runs in ``.venv-peers``,
with tractor 0.1.0a5 and its pinned trio).

The driver is the root actor (the client); the sub-actor process is the "node".
``peers.py`` puts this directory on PYTHONPATH so the sub-actor can import the module.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

warnings.simplefilter("ignore")  # tractor 0.1.0a5 on trio 0.22: MultiError deprecation noise

import tractor  # type: ignore[import-not-found]  # noqa: E402
import trio  # noqa: E402
from _peers_common import PAYLOAD, emit, in_flight_rate, serve_async, timed_sequence  # noqa: E402


async def echo(**params: Any) -> Any:
    """The echo function, run in the sub-actor."""
    return params


async def pid() -> int:
    return os.getpid()


async def main() -> None:
    import _peers_tractor as module  # the sub-actor knows the module by this name

    async with tractor.open_nursery() as actors:
        portal = await actors.start_actor("echo", enable_modules=["_peers_tractor"])
        node_pid = await portal.run(module.pid)

        async def call() -> Any:
            return await portal.run(module.echo, **PAYLOAD)

        async def handle(command: dict[str, Any]) -> dict[str, Any]:
            if command["op"] == "seq":
                return await timed_sequence(call, command["n"])
            return await in_flight_rate([call], command["in_flight"], command["total"])

        await call()
        emit({"ready": True, "node_pid": node_pid, "server_roots": [os.getpid()], "exclude": [os.getpid()]})
        await serve_async(handle)
        await portal.cancel_actor()


if __name__ == "__main__":
    sys.exit(trio.run(main))

"""``peers.py`` driver: Ray's local actor, sync method (runs in ``.venv-peers``).

The driver process is Ray's driver (the client); the actor's worker process is the
"node"; every Ray process but the driver counts as the serving side.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import ray  # type: ignore[import-not-found]
from _peers_common import PAYLOAD, emit, latency, serve_sync, warm_up_count


@ray.remote
class Echo:
    """The echo function as a Ray actor with a plain (sync) method."""

    def echo(self, **params: Any) -> Any:
        return params

    def pid(self) -> int:
        return os.getpid()


def main() -> None:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    actor = Echo.remote()  # type: ignore[attr-defined]
    actor_pid = ray.get(actor.pid.remote())
    ray.get(actor.echo.remote(**PAYLOAD))

    def call() -> Any:
        return ray.get(actor.echo.remote(**PAYLOAD))

    def handle(command: dict[str, Any]) -> dict[str, Any]:
        if command["op"] == "seq":
            n = command["n"]
            for _ in range(warm_up_count(n)):
                call()
            samples = []
            for _ in range(n):
                start = time.perf_counter()
                call()
                samples.append(time.perf_counter() - start)
            return latency(samples)
        # rate: a window of `in_flight` calls kept full with ray.wait.
        total, in_flight = command["total"], command["in_flight"]
        start = time.perf_counter()
        pending = [actor.echo.remote(**PAYLOAD) for _ in range(min(in_flight, total))]
        sent = len(pending)
        done = 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            ray.get(ready)
            done += len(ready)
            while sent < total and len(pending) < in_flight:
                pending.append(actor.echo.remote(**PAYLOAD))
                sent += 1
        return {"rate": done / (time.perf_counter() - start), "calls": done}

    emit({"ready": True, "node_pid": actor_pid, "server_roots": [os.getpid()], "exclude": [os.getpid()]})
    try:
        serve_sync(handle)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())

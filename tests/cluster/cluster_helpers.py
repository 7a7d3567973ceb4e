"""Helpers of the cluster tests: registry configs and polling with a deadline."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from spear_actors import SpearError
from spear_actors.cluster import ClusterConfig, NodeInfo

T = TypeVar("T")

# etcd is a real process on a busy machine: deadlines are generous, and they only bound
# a wait for a state; they never decide a pass by being short.
WAIT_S = 20.0


def cluster_config(url: str, prefix: str, **overrides: object) -> ClusterConfig:
    config = ClusterConfig(
        endpoints=[url],
        prefix=prefix,
        lease_ttl_s=2,
        request_timeout_s=1.0,
        retry_interval_s=0.1,
        load_publish_interval_s=0.1,
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def node_info(node_id: str, **overrides: object) -> NodeInfo:
    values: dict[str, object] = {
        "node_id": node_id,
        "endpoints": (f"ws://127.0.0.1:1/{node_id}",),
        "version": "0.1.0",
        "capacity": 8,
        "load": 0,
        "started_at": 1.0,
    }
    values.update(overrides)
    return NodeInfo(**values)  # type: ignore[arg-type]


async def eventually(probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], timeout_s: float = WAIT_S) -> T:
    """Poll *probe* until *accept* holds for its answer (an etcd error counts as not
    yet); fail after *timeout_s*."""
    last: object = None
    with trio.move_on_after(timeout_s):
        while True:
            try:
                last = await probe()
            except SpearError as exc:
                last = exc
            else:
                if accept(last):  # type: ignore[arg-type]
                    return last  # type: ignore[return-value]
            await trio.sleep(0.05)
    raise AssertionError(f"condition not reached within {timeout_s}s; last answer: {last!r}")

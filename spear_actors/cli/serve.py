"""``spear serve``: run a node until SIGINT/SIGTERM, then drain it, saying what it
waits for; a second signal stops at once."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator

import trio

from ..config import DEFAULT_LISTEN, NodeConfig
from ..gctune import tune_gc
from ..node import Node
from .logs import configure_logging
from .tokens import token_from

__all__ = ["run_serve"]

log = logging.getLogger("spear_actors.cli")


def _config(args: argparse.Namespace) -> NodeConfig:
    config = NodeConfig.from_file(args.config) if args.config else NodeConfig()
    if args.listen:
        config.listen = args.listen
    elif os.environ.get("SPEAR_LISTEN"):
        config.listen = [url.strip() for url in os.environ["SPEAR_LISTEN"].split(",") if url.strip()]
    elif not config.listen:
        config.listen = [DEFAULT_LISTEN]
    if args.data_dir:
        config.data_dir = args.data_dir
    token = token_from(args)
    if token:
        config.token = token
    if args.insecure:
        config.insecure = True
    if args.metrics_listen:
        config.metrics_listen = args.metrics_listen
    if args.tls_cert:
        config.tls.cert = args.tls_cert.resolve()
    if args.tls_key:
        config.tls.key = args.tls_key.resolve()
    return config


async def run_serve(args: argparse.Namespace) -> None:
    """Run the node of *args* until a signal, then drain it."""
    from ..serving import open_node

    configure_logging(args.log_level, args.log_format)
    config = _config(args)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_node(config) as node:
            tune_gc()  # frozen start-up, fewer collections (spear_actors/gctune.py)
            for endpoint in node.endpoints:
                print(f"spear node {config.node_id} listening on {endpoint}", flush=True)
            if node.metrics_url:
                print(f"metrics on {node.metrics_url}", flush=True)
            for declaration in config.tasks:
                print(f"  task {declaration.name!r}: {declaration.artifact.location}", flush=True)
            if config.tasks:
                first = config.tasks[0].name
                print(
                    f"try: spear invoke --url {node.endpoints[0]} --task-name {first} --function add --params '[1, 2]'",
                    flush=True,
                )
            async for signum in signals:
                await _drain(node, signal.Signals(signum).name, signals)
                break


async def _drain(node: Node, signame: str, signals: AsyncIterator[int]) -> None:
    grace = node.config.shutdown_grace_s
    _say(f"{signame}: draining: no new connections or calls; running calls get up to {grace:g} s")
    _say("(press Ctrl-C again to stop at once)")
    async with trio.open_nursery() as nursery:
        draining = trio.CancelScope()

        async def second_signal() -> None:
            async for second in signals:
                _say(f"{signal.Signals(second).name} again: stopping now")
                draining.cancel()
                return

        async def progress() -> None:
            started = trio.current_time()
            while True:
                health = await node.get_health()
                running, pending = health["running_executions"], health["pending_executions"]
                if running or pending:
                    left = grace - (trio.current_time() - started)
                    _say(f"waiting for {running} running and {pending} pending executions ({left:.0f} s left)")
                await trio.sleep(1.0)

        nursery.start_soon(second_signal)
        nursery.start_soon(progress)
        with draining:
            finished = await node.drain()
            if finished:
                _say("drained: every call finished")
            else:
                _say("grace period over: ending the executions still running")
        nursery.cancel_scope.cancel()
    _say("stopping instances")


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)

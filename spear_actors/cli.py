"""The ``spear`` command: run a node, or talk to one.

    spear serve [--config FILE] [--listen URL]... [--data-dir DIR] [--token T]
    spear invoke [--url URL] (--artifact PATH --task-name NAME | --task-id ID)
                 --function NAME [--params JSON|@file] [--timeout-ms N] [--json]
    spear health [--url URL] [--json]

Errors go to stderr as ``CODE: message`` with exit status 1 (2 for usage errors).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import trio

from .config import DEFAULT_LISTEN, NodeConfig
from .errors import ErrorCode, SpearError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spear", description="spear_actors function-execution node")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run a node until SIGINT/SIGTERM")
    serve.add_argument("--config", type=Path, help="TOML or JSON node config")
    serve.add_argument("--listen", action="append", default=None, metavar="URL",
                       help=f"gateway endpoint (repeatable; default {DEFAULT_LISTEN})")
    serve.add_argument("--data-dir", type=Path)
    serve.add_argument("--token", help="require this token from clients")
    serve.add_argument("--log-level", default="INFO")

    def client_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--url", default=DEFAULT_LISTEN, help=f"node endpoint (default {DEFAULT_LISTEN})")
        sub.add_argument("--token", help="client token, if the node requires one")
        sub.add_argument("--json", action="store_true", help="print machine-readable JSON")

    invoke = commands.add_parser("invoke", help="invoke a function")
    client_options(invoke)
    invoke.add_argument("--artifact", help="artifact location (a .py file runs with the node's Python)")
    invoke.add_argument("--artifact-type", help="process or wasm (default: from the extension)")
    invoke.add_argument("--task-name")
    invoke.add_argument("--task-id")
    invoke.add_argument("--function", required=True)
    invoke.add_argument("--params", help="JSON parameters, or @file to read them from a file")
    invoke.add_argument("--timeout-ms", type=int, default=0)

    health = commands.add_parser("health", help="show the node's health")
    client_options(health)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``spear`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            trio.run(_serve, args)
        else:
            result = trio.run(_client_command, args)
            # invoke prints its result as JSON for scripts; --json prints whole responses.
            _print(result, args.json or args.command == "invoke")
    except SpearError as exc:
        print(f"{exc.code.value}: {exc.message}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def _print(result: Any, as_json: bool) -> None:
    if as_json or not isinstance(result, dict):
        print(json.dumps(result, default=repr))
        return
    for key, value in result.items():
        shown = json.dumps(value, default=repr) if isinstance(value, (dict, list)) else value
        print(f"{key:>20}: {shown}")


async def _serve(args: argparse.Namespace) -> None:
    from .node import open_node

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = NodeConfig.from_file(args.config) if args.config else NodeConfig()
    if args.listen:
        config.listen = args.listen
    elif not config.listen:
        config.listen = [DEFAULT_LISTEN]
    if args.data_dir:
        config.data_dir = args.data_dir
    if args.token:
        config.token = args.token
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_node(config) as node:
            for endpoint in node.endpoints:
                print(f"spear node {config.node_id} listening on {endpoint}", flush=True)
            for declaration in config.tasks:
                print(f"  task {declaration.name!r}: {declaration.artifact.location}", flush=True)
            if config.tasks:
                first = config.tasks[0].name
                print(
                    f"try: spear invoke --url {node.endpoints[0]} --task-name {first} "
                    f"--function add --params '[1, 2]'",
                    flush=True,
                )
            async for signum in signals:
                logging.getLogger(__name__).info("signal %s: shutting down", signal.Signals(signum).name)
                break


def _load_params(text: str | None) -> Any:
    if text is None:
        return None
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise SpearError(ErrorCode.INVALID_ARGUMENT, f"--params is not valid JSON: {exc}") from None


def _artifact_spec(location: str, artifact_type: str | None) -> dict[str, Any]:
    path = Path(location)
    if "://" not in location:
        location = str(path.resolve())
    kind = artifact_type or ("wasm" if path.suffix in (".wasm", ".wat") else "process")
    return {"location": location, "artifact_type": kind}


async def _client_command(args: argparse.Namespace) -> Any:
    from .client import connect

    async with connect(args.url, token=args.token) as client:
        if args.command == "health":
            return await client.health()
        fields: dict[str, Any] = {}
        if args.task_id:
            fields["task_id"] = args.task_id
        if args.task_name:
            fields["task_name"] = args.task_name
        if args.artifact:
            fields["artifact_spec"] = _artifact_spec(args.artifact, args.artifact_type)
            fields.setdefault("task_name", Path(args.artifact).stem)
        if args.timeout_ms:
            fields["context"] = {"timeout_ms": args.timeout_ms}
        response = await client.invoke(args.function, _load_params(args.params), **fields)
        return response if args.json else response.get("result")


if __name__ == "__main__":
    main()

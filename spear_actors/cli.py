"""The ``spear`` command: run a node, or talk to one.

    spear serve [--config FILE] [--listen URL]... [--data-dir DIR] [--token T]
    spear invoke [--url URL] (--artifact LOCATION [--checksum SHA256] [--task-name NAME] | --task-id ID
                 | --task-name NAME) --function NAME [--params JSON|@file] [--timeout-ms N]
                 [--mode sync|async|stream] [--execution-id ID] [--json]
    spear status ID [--wait] [--logs]      spear cancel ID [--force]
    spear tasks [--prefix P]               spear task ID
    spear delete-task ID [--force]         spear executions [--task ID] [--status S]
    spear stats                            spear health

Every command accepts ``--url``, ``--token`` and ``--json`` (machine-readable output;
``invoke`` without ``--json`` prints just the result as JSON). Errors go to stderr
as ``CODE: message`` with exit status 1 (2 for usage errors).
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
    serve.add_argument(
        "--listen",
        action="append",
        default=None,
        metavar="URL",
        help=f"gateway endpoint (repeatable; default {DEFAULT_LISTEN})",
    )
    serve.add_argument("--data-dir", type=Path)
    serve.add_argument("--token", help="require this token from clients")
    serve.add_argument("--log-level", default="INFO")

    def client_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--url", default=DEFAULT_LISTEN, help=f"node endpoint (default {DEFAULT_LISTEN})")
        sub.add_argument("--token", help="client token, if the node requires one")
        sub.add_argument("--json", action="store_true", help="print machine-readable JSON")

    invoke = commands.add_parser("invoke", help="invoke a function")
    client_options(invoke)
    invoke.add_argument(
        "--artifact", help="artifact location: path, file://, http(s):// (a .py file runs with the node's Python)"
    )
    invoke.add_argument("--artifact-type", help="process or wasm (default: from the extension)")
    invoke.add_argument("--checksum", help="sha256 of the artifact (required for http(s) locations)")
    invoke.add_argument("--artifact-config", help='artifact_spec.config as JSON (e.g. \'{"abi": "export"}\')')
    invoke.add_argument("--task-name")
    invoke.add_argument("--task-id")
    invoke.add_argument("--function", required=True)
    invoke.add_argument("--params", help="JSON parameters, or @file to read them from a file")
    invoke.add_argument("--timeout-ms", type=int, default=0)
    invoke.add_argument("--mode", choices=["sync", "async", "stream"], default="sync")
    invoke.add_argument("--execution-id", help="idempotency key: a repeated id never runs twice")

    status = commands.add_parser("status", help="show an execution")
    client_options(status)
    status.add_argument("execution_id")
    status.add_argument("--wait", action="store_true", help="wait until it finishes")
    status.add_argument("--logs", action="store_true", help="include its log lines")

    cancel = commands.add_parser("cancel", help="cancel an execution")
    client_options(cancel)
    cancel.add_argument("execution_id")
    cancel.add_argument("--force", action="store_true", help="kill the instance instead of asking")

    tasks = commands.add_parser("tasks", help="list tasks")
    client_options(tasks)
    tasks.add_argument("--prefix", default="")
    tasks.add_argument("--limit", type=int, default=100)
    tasks.add_argument("--start-after", default="")

    task = commands.add_parser("task", help="show a task")
    client_options(task)
    task.add_argument("task_id")

    delete = commands.add_parser("delete-task", help="delete a task")
    client_options(delete)
    delete.add_argument("task_id")
    delete.add_argument("--force", action="store_true", help="cancel its running executions")

    executions = commands.add_parser("executions", help="list executions")
    client_options(executions)
    executions.add_argument("--task", default="")
    executions.add_argument("--status", action="append", help="filter by status (repeatable)")
    executions.add_argument("--limit", type=int, default=100)
    executions.add_argument("--start-after", default="")

    for name, text in (("stats", "show statistics"), ("health", "show the node's health")):
        client_options(commands.add_parser(name, help=text))
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``spear`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            trio.run(_serve, args)
        else:
            trio.run(_client_command, args)
    except SpearError as exc:
        print(f"{exc.code.value}: {exc.message}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def _show(result: Any, as_json: bool) -> None:
    """Print *result*: JSON for scripts, else a table (lists of maps) or key: value lines."""
    if as_json or not isinstance(result, dict):
        print(json.dumps(result, default=repr), flush=True)
        return
    tables = {k: v for k, v in result.items() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)}
    for key, value in result.items():
        if key in tables or key == "next_start_after":
            continue
        shown = json.dumps(value, default=repr) if isinstance(value, (dict, list)) else value
        print(f"{key:>24}: {shown}")
    for key, rows in tables.items():
        if len(tables) > 1 or len(result) > 2:
            print(f"\n{key}:")
        _table(rows)
    cursor = result.get("next_start_after")
    if cursor:
        print(f"(more: --start-after {cursor})")


_COLUMNS = (
    "task_id",
    "task_name",
    "execution_id",
    "function_name",
    "status",
    "instances",
    "instance_id",
    "inflight",
    "executions",
    "execution_time_ms",
    "description",
)


def _table(rows: list[dict[str, Any]]) -> None:
    columns = [c for c in _COLUMNS if any(c in row for row in rows)]
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for line in cells:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return str(len(value))
    return str(value)


async def _serve(args: argparse.Namespace) -> None:
    from .serving import open_node

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
                    f"try: spear invoke --url {node.endpoints[0]} --task-name {first} --function add --params '[1, 2]'",
                    flush=True,
                )
            async for signum in signals:
                logger = logging.getLogger(__name__)
                logger.info("signal %s: draining (up to %gs)", signal.Signals(signum).name, config.shutdown_grace_s)
                if not await node.drain():
                    logger.warning("grace period over: ending the executions still running")
                break


def _load_params(text: str | None) -> Any:
    if text is None:
        return None
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise SpearError(ErrorCode.INVALID_ARGUMENT, f"not valid JSON: {exc}") from None


def _artifact_spec(args: argparse.Namespace) -> dict[str, Any]:
    location: str = args.artifact
    path = Path(location)
    if "://" not in location:
        location = str(path.resolve())
    kind = args.artifact_type or ("wasm" if path.suffix in (".wasm", ".wat") else "process")
    spec: dict[str, Any] = {"location": location, "artifact_type": kind}
    if args.checksum:
        spec["checksum"] = args.checksum
    if args.artifact_config:
        config = _load_params(args.artifact_config)
        if not isinstance(config, dict):
            raise SpearError(ErrorCode.INVALID_ARGUMENT, "--artifact-config must be a JSON object")
        spec["config"] = config
    return spec


def _invoke_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if args.task_id:
        fields["task_id"] = args.task_id
    if args.task_name:
        fields["task_name"] = args.task_name
    if args.artifact:
        fields["artifact_spec"] = _artifact_spec(args)
        fields.setdefault("task_name", Path(args.artifact.rsplit("/", 1)[-1]).stem)
    context: dict[str, Any] = {}
    if args.timeout_ms:
        context["timeout_ms"] = args.timeout_ms
    if args.execution_id:
        context["execution_id"] = args.execution_id
    if context:
        fields["context"] = context
    if args.mode == "async":
        fields["execution_mode"] = "ASYNC"
    return fields


async def _client_command(args: argparse.Namespace) -> None:
    from .client import connect

    async with connect(args.url, token=args.token) as client:
        command = args.command
        if command == "invoke":
            await _invoke(client, args)
            return
        result: Any
        if command == "status":
            if args.wait:
                result = await client.wait_execution(args.execution_id, include_logs=args.logs)
            else:
                result = await client.get_execution(args.execution_id, include_logs=args.logs)
        elif command == "cancel":
            result = await client.cancel_execution(args.execution_id, force=args.force)
        elif command == "tasks":
            result = await client.list_tasks(args.prefix, args.limit, args.start_after)
        elif command == "task":
            result = await client.get_task(args.task_id, include_executions=True)
        elif command == "delete-task":
            result = await client.delete_task(args.task_id, force=args.force)
        elif command == "executions":
            result = await client.list_executions(args.task, args.status, args.limit, args.start_after)
        elif command == "stats":
            result = await client.get_stats()
        else:
            result = await client.get_health()
        _show(result, args.json)


async def _invoke(client: Any, args: argparse.Namespace) -> None:
    params = _load_params(args.params)
    fields = _invoke_fields(args)
    if args.mode != "stream":
        response = await client.invoke(args.function, params, **fields)
        if args.mode == "async" and not args.json:
            _show(response, False)
        else:  # the result alone, as JSON, for scripts; --json gives the whole response
            _show(response if args.json else response.get("result"), True)
        return
    async with client.stream(args.function, params, **fields) as items:
        async for item in items:  # chunks print as they come
            _show({"chunk": item} if args.json else item, True)
        if args.json:
            _show(items.result, True)


if __name__ == "__main__":
    main()

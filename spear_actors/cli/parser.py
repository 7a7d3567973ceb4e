"""The ``spear`` argument parser. The client subcommands' arguments come from the
method table (:data:`spear_actors.api.METHODS`); ``serve``, ``invoke`` and ``top``
are written out."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import __version__
from ..api import METHODS, Method, Param
from ..config import DEFAULT_LISTEN

__all__ = ["COMMANDS", "build_parser"]

COMMANDS: dict[str, Method] = {m.cli.name: m for m in METHODS if m.cli is not None}
"""Subcommand name → the method it calls."""

_ENV_HELP = "environment: SPEAR_URL (default --url), SPEAR_TOKEN (default token), SPEAR_CACERT (default --cacert)"


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _sub(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str, examples: tuple[str, ...]
) -> argparse.ArgumentParser:
    return commands.add_parser(
        name,
        help=help,
        description=help,
        epilog=_examples(*examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _client_options(sub: argparse.ArgumentParser) -> None:
    group = sub.add_argument_group("connection and output")
    group.add_argument("--url", default=None, help=f"node endpoint (default $SPEAR_URL or {DEFAULT_LISTEN})")
    group.add_argument("--token-file", type=Path, help="read the client token from this file")
    group.add_argument("--token", help="client token (visible in ps: prefer --token-file or $SPEAR_TOKEN)")
    group.add_argument(
        "--cacert",
        type=Path,
        help="PEM CA certificates to check a wss:// or tls:// node against (default $SPEAR_CACERT, else the "
        "system's trusted CAs)",
    )
    group.add_argument("--json", action="store_true", help="machine-readable JSON output (errors too, on stderr)")
    group.add_argument("--debug", action="store_true", help="show Python tracebacks of the CLI's own failures")


def _param_argument(sub: argparse.ArgumentParser, param: Param) -> None:
    assert param.cli is not None
    help_text = param.cli_help or param.doc
    if not param.cli.startswith("-"):
        sub.add_argument(param.cli, metavar=param.cli.upper(), help=help_text)
        return
    dest = param.name
    if param.kind is bool:
        sub.add_argument(param.cli, dest=dest, action="store_true", help=help_text)
    elif param.kind is list:
        sub.add_argument(param.cli, dest=dest, action="append", help=help_text)
    else:
        default = None if param.required else param.default
        shown = f" (default {default})" if default not in (None, "") else ""
        sub.add_argument(param.cli, dest=dest, type=param.kind, default=default, help=help_text + shown)


def build_parser() -> argparse.ArgumentParser:
    """The whole ``spear`` command line."""
    parser = argparse.ArgumentParser(
        prog="spear",
        description="spear_actors: run a function-execution node, or talk to one.",
        epilog=_examples(
            "spear serve --config examples/node.toml",
            "spear invoke --task-name hello --function add --params '[1, 2]'",
            "spear tasks",
            "spear top --once",
        )
        + "\n\n"
        + _ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"spear {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = _sub(
        commands,
        "serve",
        "run a node until SIGINT/SIGTERM (a second Ctrl-C stops at once)",
        (
            "spear serve --config examples/node.toml",
            "spear serve --listen ws://127.0.0.1:7500 --data-dir /tmp/spear",
            "SPEAR_TOKEN=s3cret spear serve --listen ws://0.0.0.0:7411",
        ),
    )
    serve.add_argument("--config", type=Path, help="TOML or JSON node config")
    serve.add_argument(
        "--listen",
        action="append",
        default=None,
        metavar="URL",
        help=f"gateway endpoint, repeatable (default $SPEAR_LISTEN, the config's, or {DEFAULT_LISTEN})",
    )
    serve.add_argument("--data-dir", type=Path, help="where artifacts and state are kept")
    serve.add_argument("--token-file", type=Path, help="require the token in this file from clients")
    serve.add_argument("--token", help="require this token (visible in ps: prefer --token-file or $SPEAR_TOKEN)")
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow listening beyond loopback without a token (anyone who can connect may run code)",
    )
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate chain of the wss:// and tls:// listeners")
    serve.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    serve.add_argument("--metrics-listen", metavar="URL", help="serve Prometheus metrics, e.g. http://127.0.0.1:9464")
    serve.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    serve.add_argument("--log-format", choices=["text", "json"], default="text", help="log lines as text or JSON")
    serve.add_argument("--debug", action="store_true", help="show Python tracebacks of start-up failures")

    invoke = _sub(
        commands,
        "invoke",
        "invoke a function; prints its result as JSON",
        (
            "spear invoke --task-name hello --function add --params '[1, 2]'",
            "spear invoke --task-name hello --function echo --params @params.json --json",
            "spear invoke --artifact examples/hello_agent.py --function add --params '[40, 2]'",
            "spear invoke --task-name hello --function count --params '[3]' --mode stream",
            "spear invoke --task-name hello --function sleep --params '[30]' --mode async",
        ),
    )
    target = invoke.add_argument_group("which task")
    target.add_argument("--task-name", help="the task's name (created from --artifact if it does not exist)")
    target.add_argument("--task-id", help="the task's id (from `spear tasks`)")
    target.add_argument(
        "--artifact", help="artifact location: path, file://, http(s):// (a .py file runs with the node's Python)"
    )
    target.add_argument("--artifact-type", help="process, wasm or external (default: from the extension)")
    target.add_argument("--checksum", help="sha256 of the artifact (required for http(s) locations)")
    target.add_argument("--artifact-config", help='artifact_spec.config as JSON (e.g. \'{"abi": "export"}\')')
    target.add_argument(
        "--force-new-instance",
        action="store_true",
        help="start a new instance for this call (with --artifact naming another artifact: replace the task)",
    )
    call = invoke.add_argument_group("the call")
    call.add_argument("--function", required=True, help="the function to call")
    call.add_argument("--params", help="JSON parameters (a list: positional, a map: keyword), or @file")
    call.add_argument("--timeout-ms", type=int, default=0, help="deadline of the execution (default: the node's)")
    call.add_argument(
        "--mode",
        choices=["sync", "async", "stream"],
        default="sync",
        help="sync: wait for the result; async: print the execution id; stream: print items as they come",
    )
    call.add_argument("--execution-id", help="idempotency key: a repeated id never runs twice")
    call.add_argument("--verbose", action="store_true", help="show a FUNCTION_ERROR's traceback")
    _client_options(invoke)

    for name, method in COMMANDS.items():
        assert method.cli is not None
        sub = _sub(commands, name, method.cli.help, method.cli.examples)
        for param in method.params or ():
            if param.cli is not None:
                _param_argument(sub, param)
        if name == "status":
            sub.add_argument("--wait", action="store_true", help="wait until it finishes (no polling)")
        if name == "tasks":
            sub.add_argument("--cluster", action="store_true", help="every task of the cluster, with its owner node")
        _client_options(sub)

    nodes = _sub(
        commands,
        "nodes",
        "list the cluster's nodes with their load (a node in a cluster)",
        ("spear nodes", "spear nodes --json"),
    )
    _client_options(nodes)

    top = _sub(
        commands,
        "top",
        "live view of tasks, instances, queue depth, calls/s and latency",
        ("spear top", "spear top --once", "spear top --interval 5"),
    )
    top.add_argument("--once", action="store_true", help="print one snapshot and exit")
    top.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2)")
    _client_options(top)
    return parser

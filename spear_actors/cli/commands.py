"""The ``spear`` client commands: one connection, one method of the table (or
``invoke``), the answer printed."""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shlex
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from .._nursery import background_nursery
from ..api import Method
from ..client import Client, client_ssl_context, connect
from ..config import DEFAULT_LISTEN
from ..errors import ErrorCode, SpearError
from ..protocol.transports import parse_endpoint
from .output import show
from .parser import COMMANDS
from .tokens import token_from

__all__ = ["run_client_command"]

_SPINNER_AFTER = 1.0


def node_url(args: argparse.Namespace) -> str:
    """--url, else $SPEAR_URL, else the default endpoint."""
    url: str = args.url or os.environ.get("SPEAR_URL") or DEFAULT_LISTEN
    return url


async def run_client_command(args: argparse.Namespace) -> None:
    """Connect and run the command *args* names."""
    url = node_url(args)
    cacert = args.cacert or os.environ.get("SPEAR_CACERT") or None
    ssl_context = client_ssl_context(cacert) if cacert else None
    try:
        async with connect(url, token=token_from(args), connect_timeout=5.0, ssl_context=ssl_context) as client:
            await _run(client, args)
    except SpearError as exc:
        if exc.code is ErrorCode.UNAVAILABLE and exc.message.startswith("cannot connect"):
            raise await _not_running(url, exc) from None
        raise


async def _run(client: Client, args: argparse.Namespace) -> None:
    if args.command == "invoke":
        await _invoke(client, args)
        return
    if args.command == "top":
        from .top import run_top

        await run_top(client, args)
        return
    if args.command == "nodes":
        health = await client.get_health(scope="cluster")
        show({"cluster_state": health["cluster"]["state"], "nodes": health["nodes"]}, args.json)
        return
    method = COMMANDS[args.command]
    if args.command == "status" and args.wait:
        method = COMMANDS["wait"]
    params = _params(method, args)
    if params.get("task_id") and args.command in ("task", "delete-task", "executions"):
        params["task_id"] = await _task_id(client, params["task_id"])
    if args.command == "task":
        params["include_executions"] = True
    if args.command == "tasks" and args.cluster:
        params["scope"] = "cluster"
    answer = await client.call(method.name, params)
    if args.command == "agent-secret" and not args.json:
        _print_agent_environment(answer)
        return
    show(answer, args.json)


def _print_agent_environment(answer: dict[str, Any]) -> None:
    """The environment of an external agent, as lines to paste (an env file, or shell
    assignments); what they are for goes to stderr, so stdout is only the lines."""
    for name, value in answer["env"].items():
        print(f"{name}={shlex.quote(str(value))}")
    print(
        f"# one agent of task {answer['task_name']} may dial in once with this secret, "
        f"within {answer['ttl_s']:g} s (agent id {answer['agent_id']})",
        file=sys.stderr,
    )


def _params(method: Method, args: argparse.Namespace) -> dict[str, Any]:
    """The wire params of *method* from the parsed command line (only those given)."""
    params: dict[str, Any] = {}
    for param in method.params or ():
        if param.cli is None:
            continue
        dest = param.cli if not param.cli.startswith("-") else param.name
        value = getattr(args, dest, None)
        if value is not None and value != param.default:
            params[param.name] = value
    return params


async def _task_id(client: Client, name_or_id: str) -> str:
    """The id of the task *name_or_id* names (a task id, or a task name)."""
    tasks = await _all_task_names(client)
    if name_or_id in tasks:
        return tasks[name_or_id]
    if name_or_id in tasks.values():
        return name_or_id
    raise _no_such_task(name_or_id, tasks, "no task has the id or name")


async def _all_task_names(client: Client) -> dict[str, str]:
    """Task name → id, over every page (a node has few tasks; bounded all the same)."""
    names: dict[str, str] = {}
    cursor = ""
    for _ in range(100):
        page = await client.call("list_tasks", {"limit": 1000, **({"start_after": cursor} if cursor else {})})
        names.update({task["task_name"]: task["task_id"] for task in page["tasks"]})
        cursor = page["next_start_after"]
        if not cursor:
            break
    return names


def _no_such_task(name: str, tasks: dict[str, str], what: str) -> SpearError:
    close = difflib.get_close_matches(name, list(tasks), n=5, cutoff=0.6)
    message = f"{what} {name!r}"
    if close:
        message += f"; did you mean: {', '.join(close)}?"
    elif tasks:
        message += f"; tasks: {', '.join(sorted(tasks)[:10])}"
    return SpearError(ErrorCode.NOT_FOUND, message)


async def _not_running(url: str, error: SpearError) -> SpearError:
    """Why *url* cannot be reached (*error* said so), said plainly, with what to do
    about it."""
    hint = "start one with `spear serve` (or `make run`), or give the right --url / $SPEAR_URL"
    try:
        endpoint = parse_endpoint(url)
    except SpearError:
        return SpearError(ErrorCode.UNAVAILABLE, f"cannot connect to {url}", {"hint": hint})
    if "TLS handshake failed" in error.message:
        cause = error.message.split(": ", 1)[1]
        return SpearError(
            ErrorCode.UNAVAILABLE,
            f"cannot connect to the spear node at {url}: {cause}",
            {"hint": "give the CA certificate that signed the node's certificate with --cacert or $SPEAR_CACERT"},
        )
    cause = "the handshake failed (is it a spear node, and the right scheme?)"
    address: Any
    try:
        with trio.fail_after(3):
            if endpoint.scheme == "unix":
                family, kind, proto, address = socket.AF_UNIX, socket.SOCK_STREAM, 0, endpoint.path
            else:
                infos = await trio.socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
                family, kind, proto, _, address = infos[0]
            with trio.socket.socket(family, kind, proto) as probe:
                await probe.connect(address)
    except socket.gaierror as exc:
        cause = f"cannot resolve {endpoint.host!r}: {exc.strerror}"
    except trio.TooSlowError:
        cause = "connection timed out (a firewall, or a host that does not answer)"
    except ConnectionRefusedError:
        cause = "connection refused (nothing listens there)"
    except FileNotFoundError:
        cause = "no such socket file"
    except OSError as exc:
        cause = exc.strerror or repr(exc)
    return SpearError(ErrorCode.UNAVAILABLE, f"no spear node is reachable at {url}: {cause}", {"hint": hint})


# -- invoke ------------------------------------------------------------------------


def _load_json(text: str, what: str) -> Any:
    if text.startswith("@"):
        path = text[1:]
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise SpearError(ErrorCode.INVALID_ARGUMENT, f"{what}: cannot read {path!r}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise SpearError(ErrorCode.INVALID_ARGUMENT, f"{what} is not valid JSON: {exc}") from None


def _artifact_spec(args: argparse.Namespace) -> dict[str, Any]:
    location: str = args.artifact
    path = Path(location)
    kind = args.artifact_type or ("wasm" if path.suffix in (".wasm", ".wat") else "process")
    if "://" not in location and kind != "external":  # (an external task's location only describes it)
        location = str(path.resolve())
    spec: dict[str, Any] = {"location": location, "artifact_type": kind}
    if args.checksum:
        spec["checksum"] = args.checksum
    if args.artifact_config:
        config = _load_json(args.artifact_config, "--artifact-config")
        if not isinstance(config, dict):
            raise SpearError(ErrorCode.INVALID_ARGUMENT, "--artifact-config must be a JSON object")
        spec["config"] = config
    return spec


def _invoke_fields(args: argparse.Namespace, execution_id: str) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if args.task_id:
        fields["task_id"] = args.task_id
    if args.task_name:
        fields["task_name"] = args.task_name
    if args.artifact:
        fields["artifact_spec"] = _artifact_spec(args)
        fields.setdefault("task_name", Path(args.artifact.rsplit("/", 1)[-1]).stem)
    if args.force_new_instance:
        fields["force_new_instance"] = True
    context: dict[str, Any] = {"execution_id": execution_id}
    if args.timeout_ms:
        context["timeout_ms"] = args.timeout_ms
    fields["context"] = context
    if args.mode == "async":
        fields["execution_mode"] = "ASYNC"
    return fields


async def _invoke(client: Client, args: argparse.Namespace) -> None:
    params = None if args.params is None else _load_json(args.params, "--params")
    # the CLI names the execution itself, so that a spinner can show the id
    execution_id = args.execution_id or f"exec-{uuid.uuid4().hex}"
    fields = _invoke_fields(args, execution_id)
    try:
        async with _spinner(execution_id, enabled=args.mode != "async"):
            if args.mode != "stream":
                response = await client.invoke(args.function, params, **fields)
                if args.mode == "async" and not args.json:
                    show(response, False)
                else:  # the result alone, as JSON, for scripts; --json gives the whole response
                    show(response if args.json else response.get("result"), True)
                return
            items_seen = 0
            async with client.stream(args.function, params, **fields) as items:
                async for item in items:  # chunks print as they come
                    items_seen += 1
                    show({"chunk": item} if args.json else item, True)
                final = items.result
            if args.json:
                show(final, True)
            elif items_seen == 0 and isinstance(final, dict) and final.get("result") is not None:
                show(final["result"], True)  # a plain function called as a stream: its result
    except SpearError as exc:
        if (
            exc.code is ErrorCode.INVALID_ARGUMENT
            and "artifact_spec is required" in exc.message
            and args.task_name
            and not args.artifact
        ):
            tasks = await _all_task_names(client)
            error = _no_such_task(args.task_name, tasks, "no task has the name")
            error.details["hint"] = "to create a task, give --artifact LOCATION"
            raise error from None
        raise


@asynccontextmanager
async def _spinner(execution_id: str, *, enabled: bool) -> AsyncIterator[None]:
    """On a terminal, after a second: a spinner on stderr with the elapsed time and
    the execution id (never on a pipe, never for quick calls)."""
    if not (enabled and sys.stderr.isatty()):
        yield
        return
    async with background_nursery() as nursery:
        nursery.start_soon(_spin, execution_id)
        yield


async def _spin(execution_id: str) -> None:
    from rich.console import Console
    from rich.live import Live
    from rich.spinner import Spinner

    await trio.sleep(_SPINNER_AFTER)
    start = trio.current_time() - _SPINNER_AFTER
    spinner = Spinner("dots", f"{execution_id}: running")
    # stdout stays the caller's: results printed meanwhile go where they belong
    with Live(spinner, console=Console(stderr=True), transient=True, redirect_stdout=False, redirect_stderr=False):
        while True:
            spinner.update(text=f"{execution_id}: running, {trio.current_time() - start:.0f} s (Ctrl-C cancels)")
            await trio.sleep(0.25)

"""The FunctionService methods a node serves: one entry each.

Adding a method is one :class:`Method` here plus its implementation on
:class:`~spear_actors.node.Node` (the attribute named by ``node_method``). The
gateway's dispatch and validation, the client's methods, the ``spear`` subcommands'
arguments and the method list in docs/protocol.md all follow from this table.
"""

from __future__ import annotations

from typing import Final

from .spec import REQUIRED, CliCommand, Method, Param

__all__ = ["MAX_LIST_LIMIT", "MAX_WATCH_IDS", "METHODS"]

MAX_LIST_LIMIT: Final = 1_000
"""Largest page a listing returns: one request never walks more than this many records."""
MAX_WATCH_IDS: Final = 10_000
"""Most execution ids one ``watch_executions`` request may watch."""
MAX_TIMEOUT_MS: Final = 24 * 3600 * 1000
"""Longest server-side wait a client may ask for (one day)."""
MAX_ID_LENGTH: Final = 1024
"""Longest execution or task id (or name) accepted as a param."""
MAX_REASON_LENGTH: Final = 1024
MAX_SECRET_TTL_S: Final = 30 * 86400
"""Longest agent secret validity a request may ask for (the node's policy may allow less)."""

_EXECUTION_ID = Param(
    "execution_id", str, REQUIRED, "the execution", minimum=1, maximum=MAX_ID_LENGTH, cli="execution_id"
)
_TASK_ID = Param(
    "task_id",
    str,
    REQUIRED,
    "the task's id (the CLI also accepts its name)",
    minimum=1,
    maximum=MAX_ID_LENGTH,
    cli="task",
    cli_help="task name or id",
)
_SCOPE = Param(
    "scope",
    str,
    "node",
    "`node`: this node; `cluster`: the whole cluster (a cluster node only)",
    maximum=16,
)
_LIMIT = Param("limit", int, 100, "page size", minimum=1, maximum=MAX_LIST_LIMIT, cli="--limit", cli_help="page size")


METHODS: Final[tuple[Method, ...]] = (
    Method(
        "invoke",
        "Run a function: SYNC answers with the response, ASYNC at once with the execution id.",
        node_method="invoke_request",
        params=None,
        result="response (SYNC) or accepted (ASYNC)",
        refused_while_draining=True,
    ),
    Method(
        "stream_function",
        "Run a function in STREAM mode: its items, then the response as the stream's end.",
        node_method="invoke_request",
        params=None,
        stream=True,
        result="items, then `stream_end.result` = response",
        refused_while_draining=True,
    ),
    Method(
        "get_execution",
        "An execution record (NOT_FOUND when unknown or evicted).",
        node_method="get_execution",
        params=(
            _EXECUTION_ID,
            Param("include_result", bool, True, "include the result"),
            Param("include_logs", bool, False, "include the log lines", cli="--logs", cli_help="include its log lines"),
        ),
        result="execution record",
        cli=CliCommand(
            "status",
            "show an execution (with --wait: once it has finished)",
            ("spear status exec-0123abcd", "spear status exec-0123abcd --wait --logs"),
        ),
    ),
    Method(
        "wait_execution",
        "Wait (server side) until the execution ends or timeout_ms passes; answers its record.",
        node_method="wait_execution",
        params=(
            _EXECUTION_ID,
            Param(
                "timeout_ms",
                int,
                None,
                "nil: until it ends",
                minimum=0,
                maximum=MAX_TIMEOUT_MS,
                nullable=True,
                python_name="timeout",
                scale=1000.0,
                cli="--timeout-ms",
                cli_help="wait at most this long (default: until it ends)",
            ),
            Param("include_logs", bool, False, "include the log lines", cli="--logs", cli_help="include its log lines"),
        ),
        result="execution record",
        cli=CliCommand("wait", "wait until an execution finishes and show it", ("spear wait exec-0123abcd",)),
    ),
    Method(
        "watch_executions",
        "Completion notices: one item per id, each execution's record as it finishes.",
        node_method="watch_executions",
        params=(
            Param(
                "execution_ids",
                list,
                REQUIRED,
                "the executions to watch",
                minimum=1,
                maximum=MAX_WATCH_IDS,
                item_kind=str,
            ),
        ),
        stream=True,
        result="items = execution records; `{count}`",
    ),
    Method(
        "cancel_execution",
        "Cancel an execution; answers its record once it has ended.",
        node_method="cancel_execution",
        params=(
            _EXECUTION_ID,
            Param(
                "reason", str, "cancelled by client", "becomes the record's error.message", maximum=MAX_REASON_LENGTH
            ),
            Param(
                "force",
                bool,
                False,
                "kill the instance instead of asking the agent",
                cli="--force",
                cli_help="kill the instance instead of asking",
            ),
        ),
        result="execution record",
        cli=CliCommand(
            "cancel", "cancel an execution", ("spear cancel exec-0123abcd", "spear cancel exec-0123abcd --force")
        ),
    ),
    Method(
        "list_executions",
        "A page of execution records (without results), oldest first.",
        node_method="list_executions",
        params=(
            Param(
                "task_id",
                str,
                "",
                "only this task's executions",
                maximum=MAX_ID_LENGTH,
                cli="--task",
                cli_help="only this task's executions (name or id)",
            ),
            Param(
                "status_filter",
                list,
                None,
                "only these statuses",
                maximum=16,
                nullable=True,
                item_kind=str,
                cli="--status",
                cli_help="only this status (repeatable)",
            ),
            _LIMIT,
            Param(
                "start_after",
                str,
                "",
                "the previous page's next_start_after",
                maximum=MAX_ID_LENGTH,
                cli="--start-after",
            ),
        ),
        result="`{executions, next_start_after}`",
        cli=CliCommand(
            "executions",
            "list executions",
            ("spear executions --status RUNNING", "spear executions --task task-0123 --limit 10"),
        ),
    ),
    Method(
        "list_tasks",
        "A page of tasks sorted by name.",
        node_method="list_tasks",
        params=(
            Param("prefix", str, "", "task names starting with it", maximum=MAX_ID_LENGTH, cli="--prefix"),
            _LIMIT,
            Param(
                "start_after",
                str,
                "",
                "a task name: the previous page's next_start_after",
                maximum=MAX_ID_LENGTH,
                cli="--start-after",
            ),
            _SCOPE,
        ),
        result="`{tasks, next_start_after}`",
        cli=CliCommand("tasks", "list tasks", ("spear tasks", "spear tasks --prefix hel --json")),
    ),
    Method(
        "get_task",
        "One task: its policy, instances and optionally recent executions.",
        node_method="get_task",
        params=(
            _TASK_ID,
            Param("include_executions", bool, False, "include recent executions"),
            Param("execution_limit", int, 20, "how many recent executions", minimum=1, maximum=MAX_LIST_LIMIT),
        ),
        result="task",
        cli=CliCommand("task", "show a task (by name or id)", ("spear task hello", "spear task task-0123abcd --json")),
    ),
    Method(
        "delete_task",
        "Delete a task once its instances have stopped.",
        node_method="delete_task",
        params=(
            _TASK_ID,
            Param(
                "force",
                bool,
                False,
                "cancel its pending and running executions",
                cli="--force",
                cli_help="cancel its running executions",
            ),
        ),
        result="`{task_id, deleted}`",
        cli=CliCommand(
            "delete-task",
            "delete a task (by name or id)",
            ("spear delete-task hello", "spear delete-task hello --force"),
        ),
    ),
    Method(
        "issue_agent_secret",
        "A one-time secret with which one agent, started elsewhere, dials in as an instance of an external task.",
        node_method="issue_agent_secret",
        params=(
            Param(
                "task_id",
                str,
                REQUIRED,
                "the external task's id or name",
                minimum=1,
                maximum=MAX_ID_LENGTH,
                cli="task",
                cli_help="task name or id",
            ),
            Param(
                "ttl_s",
                float,
                None,
                "seconds the secret is good for (nil: the node's `external_secret_ttl_s`)",
                minimum=1,
                maximum=MAX_SECRET_TTL_S,
                nullable=True,
                python_name="ttl",
                cli="--ttl",
                cli_help="seconds the secret is good for (default: the node's, 600)",
            ),
        ),
        result="`{task_id, task_name, agent_id, secret, agent_addr, ttl_s, expires_at, env}`",
        cli=CliCommand(
            "agent-secret",
            "issue a one-time secret for an external agent of a task and print its environment",
            ("spear agent-secret sensor", "spear agent-secret sensor --ttl 60 --json"),
        ),
    ),
    Method(
        "get_health",
        "The node's health summary.",
        node_method="get_health",
        params=(_SCOPE,),
        result="health",
        aliases=("health",),
        cli=CliCommand("health", "show the node's health", ("spear health", "spear health --url ws://10.0.0.5:7411")),
    ),
    Method(
        "get_stats",
        "Per node and per task statistics.",
        node_method="get_stats",
        result="stats",
        cli=CliCommand("stats", "show statistics", ("spear stats --json",)),
    ),
)
"""Every method, in the order docs/protocol.md lists them."""

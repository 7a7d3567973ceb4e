"""How the ``spear`` client commands print results and errors."""

from __future__ import annotations

import json
import sys
from typing import Any

from ..errors import SpearError

__all__ = ["print_error", "show"]

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


def show(result: Any, as_json: bool) -> None:
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
    sys.stdout.flush()


def print_error(error: SpearError, *, as_json: bool, verbose: bool = False) -> None:
    """``CODE: message`` on stderr (a JSON error object with *as_json*); with
    *verbose*, a function's traceback after it."""
    if as_json:
        print(json.dumps({"error": error.to_dict()}, default=repr), file=sys.stderr, flush=True)
        return
    print(f"{error.code.value}: {error.message}", file=sys.stderr)
    traceback = error.details.get("traceback")
    if verbose and isinstance(traceback, str) and traceback:
        print(traceback.rstrip("\n"), file=sys.stderr)
    hint = error.details.get("hint")
    if isinstance(hint, str):
        print(hint, file=sys.stderr)
    sys.stderr.flush()


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

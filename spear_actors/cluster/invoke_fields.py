"""What a node reads of an invoke request to route it, and the full parse for one it serves.

A node that forwards a call reads only the routing fields (:func:`routing_fields`)
and relays the request as it came; the owner parses it in full
(:func:`parse_invoke`). The routing fields are checked here as strictly as the full
parse would check them, so a request routed on them is one the full parse would
route the same way (tested with hypothesis).
"""

from __future__ import annotations

from typing import Any

from ..model import InvokeRequest

__all__ = ["parse_invoke", "routing_fields"]


def routing_fields(params: Any) -> tuple[bool, str] | None:
    """``(existing, task)`` of an invoke request's params: whether it names an
    existing task, and that task's id (else the new task's name). None when the
    params are not in their plain form (a map; ``invocation_type`` absent or spelt
    ``NEW_TASK`` / ``EXISTING_TASK``; a non-empty string ``function_name``; the task's
    non-empty string id or name): the caller then parses them in full
    (:func:`parse_invoke`), which raises the precise error or accepts another
    spelling."""
    if type(params) is not dict:
        return None
    kind = params.get("invocation_type")
    if kind is None or kind == "NEW_TASK":
        task = params.get("task_name")
        existing = False
    elif kind == "EXISTING_TASK":
        task = params.get("task_id")
        existing = True
    else:
        return None
    function = params.get("function_name")
    if type(task) is not str or not task or type(function) is not str or not function:
        return None
    return existing, task


def parse_invoke(params: Any) -> InvokeRequest:
    """The invoke request in *params*, parsed and checked in full (for a call served
    here); INVALID_ARGUMENT naming what is wrong."""
    request = InvokeRequest.from_dict(params if params is not None else {})
    request.validate()
    return request

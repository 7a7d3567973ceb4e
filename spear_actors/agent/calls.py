"""One execution inside the agent, and what a running function can ask about it."""

from __future__ import annotations

import contextvars
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the cold start
    from collections.abc import Callable
    from typing import Any

__all__ = ["CallState", "cancelled", "context", "current", "log"]


class CallState:
    """One execution in progress: its request id, logs, and whether it was cancelled.

    Protocol state (credit, items sent, whether it was answered) is the core's."""

    __slots__ = ("cancelled", "future", "id", "logs", "params", "stream", "wake")

    def __init__(self, request_id: int, stream: bool, params: dict[str, Any] | None = None) -> None:
        self.id = request_id
        self.stream = stream
        self.params = params or {}
        """The ``execute`` request's params; :func:`context` picks the context from them
        when asked (most calls never ask)."""
        self.cancelled = False
        self.logs: list[str] = []
        self.future: Any = None
        """The asyncio future of a coroutine function (None for a thread)."""
        self.wake: Callable[[], None] | None = None
        """Wakes an async generator waiting for credit (set on its loop)."""


current: contextvars.ContextVar[CallState | None] = contextvars.ContextVar("spear_call", default=None)


def log(message: str) -> None:
    """Add a line to the current execution's logs (outside a call: to stderr)."""
    state = current.get()
    if state is None:
        print(message, file=sys.stderr, flush=True)
    else:
        state.logs.append(str(message))


def context() -> dict[str, Any]:
    """The current execution's context: ``execution_id``, ``environment`` and
    ``headers`` as the caller sent them (empty outside a call)."""
    state = current.get()
    if state is None:
        return {}
    params = state.params
    return {
        "execution_id": params.get("execution_id"),
        "environment": params.get("environment"),
        "headers": params.get("headers"),
    }


def cancelled() -> bool:
    """True when the current execution has been cancelled by the node."""
    state = current.get()
    return state is not None and state.cancelled

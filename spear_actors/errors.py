"""The closed set of error codes and the one exception type that carries them.

Every failure that crosses an API boundary of spear_actors (the wire protocol, the
client, the embedded node) is a :class:`SpearError` with one :class:`ErrorCode`.
"""

from __future__ import annotations

import enum

TYPE_CHECKING = False
if TYPE_CHECKING:  # keeps typing out of the agent's start-up
    from typing import Any

__all__ = ["ErrorCode", "SpearError"]


class ErrorCode(enum.StrEnum):
    """Every error code the node and its peers may send; the set is closed."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    """The request is malformed or violates a validation rule."""
    NOT_FOUND = "NOT_FOUND"
    """A named task, execution or function does not exist."""
    ALREADY_EXISTS = "ALREADY_EXISTS"
    """The thing to create exists already (and may not be reused)."""
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    """The system is not in a state that allows the operation."""
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    """A queue, quota or limit is full; ``details["retry_after_ms"]`` may hint a retry."""
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    """The operation's deadline passed before it finished."""
    CANCELLED = "CANCELLED"
    """The operation was cancelled by its caller."""
    UNAUTHENTICATED = "UNAUTHENTICATED"
    """The peer did not prove who it is (missing or wrong token or secret)."""
    PERMISSION_DENIED = "PERMISSION_DENIED"
    """The peer is known but may not do this."""
    UNAVAILABLE = "UNAVAILABLE"
    """The peer or node is gone, shutting down or unreachable; retrying may help."""
    FUNCTION_ERROR = "FUNCTION_ERROR"
    """The user's function raised or exited with an error."""
    INSTANCE_FAILED = "INSTANCE_FAILED"
    """The instance running the call died or failed to start."""
    PROTOCOL_ERROR = "PROTOCOL_ERROR"
    """A peer broke the wire protocol (bad frame, bad message, bad sequence)."""
    INTERNAL = "INTERNAL"
    """A bug in spear_actors: the invariant that broke is in the message."""


class SpearError(Exception):
    """An error with a code from the closed set, a message and optional details.

    ``details`` is a msgpack-able map: e.g. ``retry_after_ms`` for RESOURCE_EXHAUSTED,
    ``traceback`` and ``type`` for FUNCTION_ERROR, ``stderr_tail`` for a failed start.
    """

    def __init__(self, code: ErrorCode, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.details: dict[str, Any] = details or {}

    def __repr__(self) -> str:
        return f"SpearError({self.code.value}, {self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (SpearError, (self.code, self.message, self.details))

    def to_dict(self) -> dict[str, Any]:
        """The error as a plain map (the shape used in execution records and JSON)."""
        out: dict[str, Any] = {"code": self.code.value, "message": self.message}
        if self.details:
            out["details"] = self.details
        return out

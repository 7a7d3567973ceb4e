"""A node-wide count of live instances, shared by the task actors.

Like a :class:`trio.CapacityLimiter` it is a synchronization primitive, not
actor state: task actors take a token before starting an instance and give it
back when the instance has exited, so the node never runs more than ``limit``.
"""

from __future__ import annotations

__all__ = ["InstanceBudget"]


class InstanceBudget:
    """Tokens for live instances; never blocks (a task that gets none waits or refuses)."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def try_acquire(self) -> bool:
        """Take a token if one is free."""
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    def release(self) -> None:
        """Give a token back."""
        self.used = max(0, self.used - 1)

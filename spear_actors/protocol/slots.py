"""The base of the protocol's small value classes (messages and core events)."""

from __future__ import annotations

__all__ = ["SlotsValue"]


class SlotsValue:
    """Slots, equality by field, a readable repr; unhashable (the fields may be maps).

    Plain classes rather than dataclasses on purpose: the protocol is imported by every
    agent process at start-up, and ``dataclasses`` (with ``inspect``) and ``typing``
    would add ~10 ms to each cold start.
    """

    __slots__: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"

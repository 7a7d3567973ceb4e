"""A nursery for background tasks that stays out of its caller's way."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

__all__ = ["background_nursery"]


@asynccontextmanager
async def background_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery whose tasks are cancelled when the block ends.

    Unlike a bare ``trio.open_nursery``, an exception raised by the block itself
    comes out as it is, not wrapped in an exception group, so callers can catch
    :class:`~spear_actors.errors.SpearError` from code that happens to run beside
    background tasks. (A crash of a background task is a bug and still surfaces
    as a group.)
    """
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        try:
            yield nursery
        except BaseException as exc:
            body_error = exc
        finally:
            nursery.cancel_scope.cancel()
    if body_error is not None:
        raise body_error

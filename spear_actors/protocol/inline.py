"""Run a coroutine's first step inline, and learn whether it had to wait.

A connection's reader serves the request it read in its own task. It must hand
reading over to a fresh task before the handler waits for anything, but a handler
that answers at once (the common case for cheap methods) should not pay for that
spawn before its answer is written. :func:`run_inline` runs the handler's first step
directly; only if the handler yields to trio is *before_waiting* called, and then the
rest of the handler runs exactly as ``await`` would run it (values and exceptions
from trio pass through unchanged).
"""

from __future__ import annotations

import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, TypeVar

__all__ = ["run_inline"]

T = TypeVar("T")


async def run_inline(awaitable: Awaitable[T], before_waiting: Callable[[], None]) -> T:
    """Await *awaitable*, calling *before_waiting* just before it first yields to trio.

    Only a native coroutine is run inline; any other awaitable is awaited as usual,
    after *before_waiting*.
    """
    if not isinstance(awaitable, types.CoroutineType):
        before_waiting()
        return await awaitable
    coro: Coroutine[Any, Any, T] = awaitable
    try:
        yielded = coro.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    except BaseException:
        coro.close()
        raise
    try:
        before_waiting()
    except BaseException:
        coro.close()
        raise
    resumed: T = await _resume(coro, yielded)
    return resumed


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], yielded: Any) -> Generator[Any, Any, Any]:
    """``yield from coro``, for a coroutine that has already yielded *yielded*."""
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                yielded = coro.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as done:
                return done.value

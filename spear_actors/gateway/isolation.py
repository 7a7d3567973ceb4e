"""Whatever goes wrong while serving one request or one connection ends that request
or that connection, never a listener and never the node.

A :class:`~spear_actors.errors.SpearError` is an answer; anything else that leaves a
handler — any exception, any exception group, groups mixed with ``trio.Cancelled`` —
is a bug: it is logged with its traceback and becomes INTERNAL (for a request) or the
end of that one connection. Only a group made of nothing but cancellations (a real
cancel from outside) and KeyboardInterrupt/SystemExit pass through.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import trio

from ..errors import ErrorCode, SpearError

__all__ = ["isolated_connection", "isolated_request"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def _coded(exc: BaseException) -> SpearError | None:
    """The one SpearError *exc* stands for, if it is one (alone or as a group's only
    member); None when it is (or contains) anything else."""
    if isinstance(exc, SpearError):
        return exc
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _coded(exc.exceptions[0])
    return None


def _passes_through(exc: BaseException) -> bool:
    """True for what must not be swallowed: cancellation alone, Ctrl-C, exit."""
    if isinstance(exc, (trio.Cancelled, KeyboardInterrupt, SystemExit)):
        return True
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(trio.Cancelled)
        if rest is None:
            return True  # only cancellations: a real cancel from outside
        fatal, _ = exc.split((KeyboardInterrupt, SystemExit))
        return fatal is not None
    return False


async def isolated_request(
    what: str, call: Callable[[], Awaitable[T]], context: Callable[[], Mapping[str, object]] | None = None
) -> T:
    """Run *call*; its SpearError passes, anything else becomes INTERNAL (logged
    with its traceback and what *context* returns: request id, peer; it is called
    only then). *what* names the request in the log and the message."""
    try:
        return await call()
    except BaseException as exc:
        if _passes_through(exc):
            raise
        coded = _coded(exc)
        if coded is not None:
            try:
                raise coded from None
            finally:
                # this frame lives on in the error's traceback: holding the error in
                # it is a cycle (error → traceback → frame → error) that keeps the
                # request (a 200,000-id body) alive until a GC pass frees many at once
                coded = None
        log.error(
            "%s failed (a bug; answered INTERNAL)",
            what,
            exc_info=exc,
            extra={**(context() if context else {}), "code": "INTERNAL"},
        )
        raise SpearError(
            ErrorCode.INTERNAL, f"{what}: internal error ({type(exc).__name__}); the node's log has the details"
        ) from None


async def isolated_connection(
    description: str,
    serve: Callable[[], Awaitable[Any]],
    on_error: Callable[[SpearError], None] | None = None,
) -> None:
    """Run one connection's *serve*; whatever leaves it ends this connection only:
    a SpearError (refused hello, lost link) goes to *on_error* (default: one log
    line), anything else is a logged traceback."""
    try:
        await serve()
    except BaseException as exc:
        if _passes_through(exc):
            raise
        coded = _coded(exc)
        if coded is not None:
            if on_error is not None:
                on_error(coded)
            else:
                log.info(
                    "client %s: connection ended: %s",
                    description,
                    coded,
                    extra={"peer": description, "code": coded.code},
                )
        else:
            log.error(
                "client %s: connection handler failed (a bug; connection closed)",
                description,
                exc_info=exc,
                extra={"peer": description, "code": "INTERNAL"},
            )

"""The ``spear`` command: run a node (``spear serve``), or talk to one.

Every error goes to stderr as ``CODE: message`` with exit status 1 (a JSON error
object with ``--json``; 2 for usage errors); a Python traceback only with ``--debug``.
``spear --help`` and ``spear COMMAND --help`` show the options with examples.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import NoReturn

import trio

from ..errors import ErrorCode, SpearError
from .output import print_error
from .parser import build_parser

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``spear`` console script."""
    args = build_parser().parse_args(argv)
    as_json = bool(getattr(args, "json", False))
    try:
        if args.command == "serve":
            from .serve import run_serve

            trio.run(run_serve, args)
        else:
            from .commands import run_client_command

            trio.run(run_client_command, args)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        if _leaf(exc, BrokenPipeError) is not None:
            _quiet_broken_pipe()
        error = _as_error(exc)
        if error is None:
            if args.debug:
                raise
            error = SpearError(
                ErrorCode.INTERNAL,
                f"{type(exc).__name__}: {exc} (run with --debug for the traceback)",
            )
        print_error(error, as_json=as_json, verbose=bool(getattr(args, "verbose", False)))
        if args.debug:
            raise
        raise SystemExit(1) from None


def _leaf(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of *kind* in *exc* (walking exception groups)."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _leaf(inner, kind)
            if found is not None:
                return found
    return None


def _as_error(exc: BaseException) -> SpearError | None:
    """What to tell the user about *exc*: its SpearError, or a known OS failure."""
    coded = _leaf(exc, SpearError)
    if isinstance(coded, SpearError):
        return coded
    busy = _leaf(exc, OSError)
    if isinstance(busy, OSError) and busy.errno == errno.EADDRINUSE:
        return SpearError(ErrorCode.UNAVAILABLE, f"address already in use: {busy.strerror}")
    return None


def _quiet_broken_pipe() -> NoReturn:
    # the reader of our output went away (e.g. `| head`): nothing more to say, and
    # nothing for Python to flush at exit
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    raise SystemExit(1)

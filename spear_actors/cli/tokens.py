"""Where ``spear`` finds a token: ``--token-file``, ``$SPEAR_TOKEN``, then ``--token``
(last, and discouraged: the command line is visible to every user in ``ps``)."""

from __future__ import annotations

import argparse
import os

from ..errors import ErrorCode, SpearError

__all__ = ["token_from"]


def token_from(args: argparse.Namespace) -> str | None:
    """The token the command line and environment give, or None."""
    path = getattr(args, "token_file", None)
    if path is not None:
        try:
            token: str = path.read_text().strip()
        except OSError as exc:
            raise SpearError(
                ErrorCode.INVALID_ARGUMENT, f"cannot read --token-file {str(path)!r}: {exc.strerror}"
            ) from None
        if not token:
            raise SpearError(ErrorCode.INVALID_ARGUMENT, f"--token-file {str(path)!r} is empty")
        return token
    given: str | None = getattr(args, "token", None)
    return given or os.environ.get("SPEAR_TOKEN") or None

"""One declarative table of the FunctionService methods (:data:`METHODS`).

The gateway validates and dispatches by it, :class:`~spear_actors.client.Client`
gets one method per entry, ``spear`` one subcommand per entry with a ``cli``, and
docs/protocol.md's method list is :func:`method_list_markdown` (a test checks it).
"""

from __future__ import annotations

from .docs import method_list_markdown
from .spec import REQUIRED, CliCommand, Method, Param, validate_params
from .table import MAX_LIST_LIMIT, MAX_WATCH_IDS, METHODS

__all__ = [
    "BY_NAME",
    "MAX_LIST_LIMIT",
    "MAX_WATCH_IDS",
    "METHODS",
    "REQUIRED",
    "CliCommand",
    "Method",
    "Param",
    "method_list_markdown",
    "validate_params",
]

BY_NAME: dict[str, Method] = {name: m for m in METHODS for name in (m.name, *m.aliases)}
"""Method (and alias) name → method."""

"""spear_actors: a function-execution node built as an actor system on trio.

The public API is loaded lazily, so that ``spear_actors.agent`` (imported inside
every agent process) does not pay for trio and the node at start-up.
"""

from __future__ import annotations

import importlib

from .errors import ErrorCode, SpearError

TYPE_CHECKING = False  # typing stays out of the agent's start-up

if TYPE_CHECKING:
    from typing import Any

    from .client import Client, connect
    from .config import NodeConfig
    from .gctune import tune_gc
    from .node import Node
    from .serving import open_node

__all__ = ["Client", "ErrorCode", "Node", "NodeConfig", "SpearError", "connect", "open_node", "tune_gc"]
__version__ = "0.1.0"

_LAZY = {
    "Client": ".client",
    "connect": ".client",
    "NodeConfig": ".config",
    "Node": ".node",
    "open_node": ".serving",
    "tune_gc": ".gctune",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)

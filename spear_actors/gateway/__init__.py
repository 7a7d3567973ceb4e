"""The node's network front end: listeners for client services that serve the
methods of :mod:`spear_actors.api` (see :class:`Gateway`)."""

from __future__ import annotations

from .isolation import isolated_connection, isolated_request
from .server import Gateway, descriptor_budget

__all__ = ["Gateway", "descriptor_budget", "isolated_connection", "isolated_request"]

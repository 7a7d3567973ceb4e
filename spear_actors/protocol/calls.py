"""The per-request objects of a connection, by the names other modules import.

:class:`ResponseStream` (the caller's view of a stream answer) lives in
:mod:`.calling`; :class:`IncomingRequest` (the callee's view of a request it serves)
and :data:`Handler` in :mod:`.serving`.
"""

from __future__ import annotations

from .calling import ResponseStream
from .serving import Handler, IncomingRequest

__all__ = ["Handler", "IncomingRequest", "ResponseStream"]

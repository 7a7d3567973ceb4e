"""The spear_actors wire protocol: framing, messages, the state machine, transports,
connections.

The sans-IO modules (:mod:`.framing`, :mod:`.messages` and :mod:`.core`, the state
machine that holds every rule) import neither trio nor any socket code, so an agent
process can load them cheaply. The trio parts (:mod:`.transports`, :mod:`.connection`
and the modules it is split into) are imported only when first used.
"""

from __future__ import annotations

import importlib

from .framing import CLOSE_FRAME, DEFAULT_MAX_FRAME_SIZE, FrameDecoder, ProtocolError, encode_frame
from .messages import PROTOCOL_VERSION, decode_message, encode_message

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the agent's start-up
    from typing import Any

__all__ = [
    "CLOSE_FRAME",
    "DEFAULT_MAX_FRAME_SIZE",
    "PROTOCOL_VERSION",
    "Connection",
    "ProtocolCore",
    "ConnectionConfig",
    "Endpoint",
    "FrameDecoder",
    "ProtocolError",
    "accept_connection",
    "decode_message",
    "encode_frame",
    "encode_message",
    "open_connection",
    "open_transport",
    "parse_endpoint",
    "serve_endpoint",
]

_LAZY = {
    "ProtocolCore": ".core",
    "Connection": ".connection",
    "ConnectionConfig": ".connection",
    "accept_connection": ".handshake",
    "open_connection": ".handshake",
    "Endpoint": ".transports",
    "open_transport": ".transports",
    "parse_endpoint": ".transports",
    "serve_endpoint": ".transports",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)

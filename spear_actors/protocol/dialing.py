"""Dialling a ``host:port`` endpoint for a client transport: one TCP connection
(``TCP_NODELAY``: bodies are small and latency counts), with its TLS handshake done
when the endpoint asks for TLS."""

from __future__ import annotations

import socket as stdlib_socket
from collections.abc import Callable
from typing import TypeAlias

import trio

from .endpoints import Endpoint
from .tlssocket import TlsSocketStream

__all__ = ["TlsStream", "dial_tcp"]


TlsStream: TypeAlias = "trio.SSLStream[trio.SocketStream] | TlsSocketStream"
"""A TLS stream over a TCP stream that has its handshake to do first."""


async def dial_tcp(endpoint: Endpoint, wrap_tls: Callable[[trio.SocketStream], TlsStream] | None) -> trio.abc.Stream:
    """Connect to *endpoint*'s host and port; with *wrap_tls*, wrap the connection and
    complete the TLS handshake (the TCP connection is closed if it fails). Errors are
    the caller's to translate (``OSError``, ``trio.BrokenResourceError``); the caller
    bounds the time."""
    tcp = await trio.open_tcp_stream(endpoint.host, endpoint.port)
    tcp.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)
    if wrap_tls is None:
        return tcp
    tls = wrap_tls(tcp)
    try:
        await tls.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise
    return tls

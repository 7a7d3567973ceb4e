"""The client library for services talking to a node.

::

    async with spear_actors.connect("ws://127.0.0.1:7411") as client:
        response = await client.invoke("add", [1, 2], task_name="calc",
                                       artifact_spec={"location": "/srv/calc_agent.py"})
        print(response["result"])
"""

from __future__ import annotations

import inspect
import os
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from .api import METHODS, Method
from .errors import ErrorCode, SpearError
from .model import build_invoke_request
from .protocol.calls import ResponseStream
from .protocol.connection import Connection, ConnectionConfig
from .protocol.handshake import open_connection
from .protocol.messages import Hello
from .protocol.transports import open_transport

__all__ = ["Client", "client_ssl_context", "connect"]


def client_ssl_context(cacert: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """A client TLS context that trusts the CA certificates in the PEM file *cacert*
    (None: the system's trusted CAs). INVALID_ARGUMENT if the file cannot be used."""
    try:
        return ssl.create_default_context(cafile=None if cacert is None else os.fspath(cacert))
    except (OSError, ssl.SSLError) as exc:
        raise SpearError(
            ErrorCode.INVALID_ARGUMENT, f"cannot load CA certificates from {str(cacert)!r}: {exc}"
        ) from None


class Client:
    """A connection to a node, with one method per method of
    :data:`spear_actors.api.METHODS` (same names and params; ``wait_execution``
    takes ``timeout`` in seconds; stream methods are async context managers)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    async def call(self, method: str, params: Any = None, *, timeout: float | None = None) -> Any:
        """Call any node method by name (see docs/protocol.md)."""
        return await self.connection.request(method, params, timeout=timeout)

    async def invoke(self, function_name: str, parameters: Any = None, **fields: Any) -> dict[str, Any]:
        """Invoke a function; *fields* are InvokeFunctionRequest fields (task_name,
        task_id, artifact_spec, context, ...). Returns the response map, raises
        :class:`~spear_actors.errors.SpearError` (with ``.code``) on failure."""
        result: dict[str, Any] = await self.call("invoke", build_invoke_request(function_name, parameters, fields))
        return result

    @asynccontextmanager
    async def stream(
        self, function_name: str, parameters: Any = None, *, window: int = 16, **fields: Any
    ) -> AsyncIterator[ResponseStream]:
        """Invoke a streaming function (``stream_function``); iterate the yielded
        stream for its items in order. After the last item ``.result`` holds the
        final response; an error after some items is raised after them. At most
        *window* items are in flight, so a slow consumer slows the function.
        Leaving the block early cancels the execution."""
        request = build_invoke_request(function_name, parameters, fields)
        async with self.connection.stream("stream_function", request, window=window) as items:
            yield items

    stream_function = stream

    if TYPE_CHECKING:  # the table's methods, installed below; typed loosely for mypy

        def __getattr__(self, name: str) -> Callable[..., Any]: ...


def _wire_params(method: Method, bound: Mapping[str, Any]) -> dict[str, Any]:
    """The request params for Python arguments *bound* by name (scaled back to the
    wire's units; nil values left out, so the node applies its defaults)."""
    params: dict[str, Any] = {}
    for param in method.params or ():
        value = bound.get(param.py_name)
        if value is None:
            continue
        if param.scale != 1.0:
            value = round(value * param.scale) if param.kind is int else value * param.scale
        params[param.name] = value
    return params


def _signature(method: Method) -> inspect.Signature:
    parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for param in method.params or ():
        default = inspect.Parameter.empty if param.required else param.default
        parameters.append(inspect.Parameter(param.py_name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default))
    return inspect.Signature(parameters)


def _client_method(method: Method) -> Callable[..., Any]:
    """A Client method for a table entry: unary → coroutine, stream → async context
    manager yielding a :class:`ResponseStream`."""
    signature = _signature(method)

    def params_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        bound = signature.bind(None, *args, **kwargs)
        bound.apply_defaults()
        return _wire_params(method, bound.arguments)

    if method.stream:

        @asynccontextmanager
        async def stream(self: Client, *args: Any, **kwargs: Any) -> AsyncIterator[ResponseStream]:
            params = params_of(args, kwargs)
            # room for every item a list param can produce (one record per watched id)
            window = max([len(v) for v in params.values() if isinstance(v, list)], default=16)
            async with self.connection.stream(method.name, params, window=window) as items:
                yield items

        function: Callable[..., Any] = stream
    else:

        async def unary(self: Client, *args: Any, **kwargs: Any) -> Any:
            return await self.call(method.name, params_of(args, kwargs))

        function = unary
    function.__name__ = function.__qualname__ = method.name
    function.__doc__ = method.doc
    function.__signature__ = signature  # type: ignore[attr-defined]
    return function


for _method in METHODS:
    if _method.params is not None:  # invoke and stream_function are written out above
        for _name in (_method.name, *_method.aliases):
            setattr(Client, _name, _client_method(_method))


@asynccontextmanager
async def connect(
    url: str,
    token: str | None = None,
    *,
    connect_timeout: float = 10.0,
    config: ConnectionConfig | None = None,
    ssl_context: ssl.SSLContext | None = None,
    cacert: str | os.PathLike[str] | None = None,
) -> AsyncIterator[Client]:
    """Connect to a node at ``ws://host:port``, ``wss://host:port``,
    ``tcp://host:port``, ``tls://host:port`` or ``unix:///path``.

    Over ``wss://`` and ``tls://`` the node's certificate is checked against
    *ssl_context* if given, else the CA certificates in the PEM file *cacert*, else
    the system's trusted CAs.

    Raises :class:`~spear_actors.errors.SpearError` UNAVAILABLE if the node cannot be
    reached (a failed TLS handshake included, named in the message) and
    UNAUTHENTICATED if it refuses the token; INVALID_ARGUMENT if *cacert* cannot be
    read.
    """
    if ssl_context is None and cacert is not None:
        ssl_context = client_ssl_context(cacert)
    async with (
        open_transport(url, connect_timeout=connect_timeout, ssl_context=ssl_context) as transport,
        open_connection(transport, Hello(role="client", auth=token), config=config) as connection,
    ):
        yield Client(connection)

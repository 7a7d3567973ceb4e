"""Whatever leaves one request's or one connection's handler ends at most that
request (INTERNAL, logged with its traceback) or that connection; never a listener
or the node. Faults are injected as node methods that raise, served by a real
gateway to a real websocket client."""

from __future__ import annotations

import gc
import logging
import weakref
from collections.abc import Callable
from typing import Any

import pytest
import trio

from spear_actors import ErrorCode, SpearError
from spear_actors.api import BY_NAME, Method
from spear_actors.client import connect
from spear_actors.gateway import Gateway, isolated_connection, isolated_request
from spear_actors.gateway.listeners import listen
from spear_actors.gateway.refusals import RefusalLog
from spear_actors.node import Node
from spear_actors.protocol.transports import Endpoint, Transport, open_transport


async def _a_real_cancelled() -> trio.Cancelled:
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            await trio.lowlevel.checkpoint()
        except trio.Cancelled as exc:
            return exc
    raise AssertionError("not cancelled")


FAULTS: dict[str, Callable[[trio.Cancelled], BaseException]] = {
    "type_error": lambda _: TypeError("missing 1 required positional argument"),
    "value_error": lambda _: ValueError("bug"),
    "group": lambda _: ExceptionGroup("two bugs", [KeyError("k"), RuntimeError("r")]),
    "group_with_cancelled": lambda c: BaseExceptionGroup("mixed", [ValueError("bug"), c]),
    "nested_group": lambda c: BaseExceptionGroup("outer", [BaseExceptionGroup("inner", [c, OSError(5, "io")])]),
    "lone_coded_error_in_group": lambda _: ExceptionGroup(
        "one", [SpearError(ErrorCode.NOT_FOUND, "coded errors pass through")]
    ),
}


class FaultyNode:
    """The real node, plus methods that raise what FAULTS makes."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def __getattr__(self, name: str) -> Any:
        if name.startswith("fault_"):
            make = FAULTS[name.removeprefix("fault_")]

            async def raising() -> Any:
                raise make(await _a_real_cancelled())

            return raising
        return getattr(self._node, name)


async def test_a_failing_request_is_internal_and_the_connection_and_node_carry_on(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    methods = dict(BY_NAME)
    for fault in FAULTS:
        methods[fault] = Method(fault, "raises", node_method=f"fault_{fault}")
    gateway = Gateway(FaultyNode(node), methods)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        endpoints = await nursery.start(gateway.run, ["ws://127.0.0.1:0"])
        async with connect(str(endpoints[0])) as client:
            for fault in FAULTS:
                with pytest.raises(SpearError) as caught:
                    await client.call(fault)
                if fault == "lone_coded_error_in_group":
                    assert caught.value.code is ErrorCode.NOT_FOUND
                else:
                    assert caught.value.code is ErrorCode.INTERNAL, (fault, caught.value)
                    assert "internal error" in caught.value.message
                # the same connection serves the next request
                assert (await client.get_health())["status"] == "SERVING"
        async with connect(str(endpoints[0])) as again:  # and the listener new ones
            assert (await again.get_health())["status"] == "SERVING"
        nursery.cancel_scope.cancel()
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR and "INTERNAL" in r.getMessage()]
    assert len(logged) == len(FAULTS) - 1
    assert all(r.exc_info is not None for r in logged)  # with the traceback
    assert all(r.__dict__["request_id"] and r.__dict__["method"] in FAULTS for r in logged)  # and the request


class _AdmitAll:
    def admit(self, address: str) -> None:
        return None

    def release(self, address: str) -> None:
        pass


async def test_a_failing_connection_handler_ends_only_that_connection(caplog: pytest.LogCaptureFixture) -> None:
    served: list[str] = []
    faults = iter(FAULTS.values())

    async def serve(transport: Transport, peer_address: str) -> None:
        async def handler() -> None:
            make = next(faults, None)
            if make is None:
                served.append(transport.description)
                return
            raise make(await _a_real_cancelled())

        try:
            await isolated_connection(transport.description, handler)
        finally:
            await transport.aclose()

    async with trio.open_nursery() as nursery:
        connections = nursery
        endpoint: Endpoint = await nursery.start(
            lambda task_status: listen(
                "tcp://127.0.0.1:0",
                serve=serve,
                admission=_AdmitAll(),
                refusals=RefusalLog(),
                connections=connections,
                task_status=task_status,
            )
        )
        for _ in range(len(FAULTS) + 1):
            async with open_transport(endpoint) as transport:
                assert await transport.receive_body() is None  # closed by the server
        with trio.fail_after(5):
            while not served:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    failures = [r for r in caplog.records if "connection handler failed" in r.getMessage()]
    assert len(failures) == len(FAULTS) - 1 and all(r.exc_info for r in failures)


class _Body:
    """Stands for a request's decoded body (weakly referenceable)."""


async def test_a_refused_request_is_freed_at_once_not_by_the_garbage_collector() -> None:
    # A refusal's traceback holds the handler's frames, which hold the request: if
    # the error were also held by a frame in its own traceback, the request (a
    # 200,000-id body) would live until a GC pass freed many at once (~70 ms).
    box = [_Body()]
    body = weakref.ref(box[0])

    async def handler() -> None:
        held = box.pop()
        assert held is not None
        raise SpearError(ErrorCode.INVALID_ARGUMENT, "too many ids")

    gc.disable()
    try:
        try:
            await isolated_request("watch_executions", handler)
        except SpearError as exc:
            assert exc.code is ErrorCode.INVALID_ARGUMENT
        assert body() is None
    finally:
        gc.enable()

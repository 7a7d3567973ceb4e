"""The agent SDK: what runs inside a process instance.

Write functions, register them, run::

    from spear_actors.agent import Agent, log

    agent = Agent()

    @agent.function
    def add(a, b):
        return a + b

    @agent.function("shout")
    async def loud(text):
        log("shouting")            # goes to the execution's logs
        return text.upper()

    @agent.function
    def count(n):                  # a generator is a streaming function
        yield from range(n)

    if __name__ == "__main__":
        agent.run()

Parameters: a map is passed as keyword arguments, a list as positional
arguments, nil as no argument, anything else as the one argument.

The node starts this program with ``SERVICE_ADDR`` and ``SECRET`` in its
environment; :meth:`Agent.run` dials back, proves the secret and serves
``execute`` requests until the node says goodbye or goes away. Start-up is kept
light on purpose (stdlib + msgpack; asyncio is loaded only if an ``async def``
function is registered), because every cold start pays for it.

Threads: the main thread reads the connection and answers pings at once, so a
busy function never makes the agent look dead. Plain functions and generators
run in worker threads; coroutines and async generators run on one asyncio loop
in its own thread. Cancelling a coroutine cancels its task; a plain function
cannot be interrupted, so it is abandoned: the node gets CANCELLED at once, the
function's eventual result is dropped, and :func:`cancelled` turns True so a
cooperative function can stop early.
"""

from __future__ import annotations

import contextvars
import os
import socket
import sys
import threading
import time
import types
from _queue import SimpleQueue
from collections.abc import Callable

from .errors import ErrorCode
from .protocol.framing import FrameDecoder, ProtocolError, encode_frame
from .protocol.messages import (
    PROTOCOL_VERSION,
    Cancel,
    Credit,
    Error,
    Goodbye,
    Hello,
    Message,
    Ping,
    Pong,
    Request,
    Response,
    StreamEnd,
    StreamItem,
    Welcome,
    decode_message,
    encode_message,
)

__all__ = ["Agent", "cancelled", "context", "log"]

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing, inspect, queue and traceback stay out of the cold start
    from typing import Any, TypeVar

    F = TypeVar("F", bound=Callable[..., Any])

_CO_COROUTINE = 0x80
_CO_ASYNC_GENERATOR = 0x200


def _is_async(fn: Callable[..., Any]) -> bool:
    """True for ``async def`` functions and async generators (inspect, without inspect)."""
    code = getattr(fn, "__code__", None)
    return code is not None and bool(code.co_flags & (_CO_COROUTINE | _CO_ASYNC_GENERATOR))


def _is_async_generator(fn: Callable[..., Any]) -> bool:
    code = getattr(fn, "__code__", None)
    return code is not None and bool(code.co_flags & _CO_ASYNC_GENERATOR)


_current: contextvars.ContextVar[_CallState | None] = contextvars.ContextVar("spear_call", default=None)


def log(message: str) -> None:
    """Add a line to the current execution's logs (outside a call: to stderr)."""
    state = _current.get()
    if state is None:
        print(message, file=sys.stderr, flush=True)
    else:
        state.logs.append(str(message))


def context() -> dict[str, Any]:
    """The current execution's context: ``execution_id``, ``environment`` and
    ``headers`` as the caller sent them (empty outside a call)."""
    state = _current.get()
    if state is None:
        return {}
    return dict(state.context)


def cancelled() -> bool:
    """True when the current execution has been cancelled by the node."""
    state = _current.get()
    return state is not None and state.cancelled


class _CallState:
    """One execution in progress inside the agent."""

    __slots__ = ("answered", "cancelled", "cond", "context", "credit", "future", "id", "logs", "sent", "stream", "wake")

    def __init__(self, request_id: int, window: int | None, context: dict[str, Any] | None = None) -> None:
        self.context = context or {}
        self.id = request_id
        self.stream = window is not None
        self.credit = window or 0
        self.sent = 0
        self.cancelled = False
        self.answered = False
        self.logs: list[str] = []
        self.cond = threading.Condition()
        self.future: Any = None
        self.wake: Callable[[], None] | None = None
        """Wakes an async generator waiting for credit (set on its loop)."""


class _Stop(Exception):
    """The node said goodbye or the connection ended."""


class Agent:
    """A set of functions served to a node."""

    def __init__(self, name: str | None = None, *, max_workers: int = 64) -> None:
        self.name = name or os.path.basename(sys.argv[0] or "agent")
        self.max_workers = max_workers
        self.functions: dict[str, Callable[..., Any]] = {}
        self._sock: socket.socket | None = None
        self._write_lock = threading.Lock()
        self._calls: dict[int, _CallState] = {}
        self._calls_lock = threading.Lock()
        self._jobs: SimpleQueue[tuple[Callable[..., Any], _CallState] | None] = SimpleQueue()
        self._idle_workers = 0
        self._workers = 0
        self._pool_lock = threading.Lock()
        self._loop: Any = None
        self._last_received = time.monotonic()
        self._max_frame_size = 16 * 1024 * 1024
        self._running = False

    # -- registration ----------------------------------------------------------
    def function(self, fn: F | str | None = None, /, *, name: str | None = None) -> Any:
        """Register a function: ``@agent.function``, ``@agent.function("name")``
        or ``@agent.function(name="name")``."""
        if callable(fn):
            self._register(fn, name or fn.__name__)
            return fn
        chosen = fn if isinstance(fn, str) else name

        def decorate(func: F) -> F:
            self._register(func, chosen or func.__name__)
            return func

        return decorate

    def _register(self, fn: Callable[..., Any], name: str) -> None:
        if name in self.functions:
            raise ValueError(f"function {name!r} is already registered")
        if _is_async(fn):
            self._ensure_loop()
        self.functions[name] = fn

    # -- serving ----------------------------------------------------------------
    def run(self, address: str | None = None, secret: str | None = None) -> None:
        """Dial the node, authenticate and serve until the node says goodbye.

        *address* and *secret* default to ``SERVICE_ADDR`` and ``SECRET``. Exits the
        process with status 2 if the node refuses the agent.
        """
        address = address or os.environ.get("SERVICE_ADDR", "")
        secret = secret if secret is not None else os.environ.get("SECRET", "")
        if not address:
            raise SystemExit("spear agent: SERVICE_ADDR is not set (the node starts agents with it)")
        self._sock = _dial(address)
        decoder = FrameDecoder()
        hello = Hello(
            version=PROTOCOL_VERSION,
            role="agent",
            auth=secret,
            peer_id=os.environ.get("SPEAR_INSTANCE_ID"),
            meta={"functions": sorted(self.functions), "pid": os.getpid(), "sdk": "python"},
        )
        self._send(hello)
        welcome = self._receive(decoder)
        if isinstance(welcome, Error):
            print(f"spear agent: node refused us: {welcome.code}: {welcome.message}", file=sys.stderr)
            raise SystemExit(2)
        if not isinstance(welcome, Welcome):
            raise SystemExit(f"spear agent: expected welcome, got {welcome.TYPE}")
        self._running = True
        self._max_frame_size = welcome.max_frame_size
        threading.Thread(
            target=self._heartbeat,
            args=(welcome.heartbeat_interval_ms / 1000, welcome.heartbeat_timeout_ms / 1000),
            daemon=True,
        ).start()
        try:
            while True:
                self._dispatch(self._receive(decoder))
        except _Stop:
            pass
        finally:
            self._running = False
            self._close()

    def _receive(self, decoder: FrameDecoder) -> Message:
        sock = self._sock
        assert sock is not None
        while True:
            body = decoder.next_body()
            if body is not None:
                self._last_received = time.monotonic()
                return decode_message(body)
            if decoder.closed:
                raise _Stop
            try:
                data = sock.recv(65536)  # not more: see protocol/transports.py
            except OSError:
                raise _Stop from None
            if not data:
                raise _Stop
            decoder.feed(data)

    def _send(self, message: Message) -> None:
        body = encode_message(message)
        if len(body) > self._max_frame_size:
            limit = self._max_frame_size
            raise ProtocolError(f"{message.TYPE} of {len(body)} bytes exceeds the frame limit of {limit}")
        frame = encode_frame(body)
        sock = self._sock
        if sock is None:
            return
        with self._write_lock:
            try:
                sock.sendall(frame)
            except OSError:
                pass  # the reader sees the broken connection and stops

    def _close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _heartbeat(self, interval: float, timeout: float) -> None:
        seq = 0
        while self._running:
            time.sleep(interval)
            if time.monotonic() - self._last_received > timeout:
                print("spear agent: node silent past the heartbeat timeout; exiting", file=sys.stderr)
                sock = self._sock
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return
            seq += 1
            self._send(Ping(seq))

    def _dispatch(self, message: Message) -> None:
        if isinstance(message, Request):
            self._start_call(message)
        elif isinstance(message, Cancel):
            self._cancel(message)
        elif isinstance(message, Credit):
            with self._calls_lock:
                state = self._calls.get(message.id)
            if state is not None:
                with state.cond:
                    state.credit += message.n
                    state.cond.notify_all()
                if state.wake is not None:
                    state.wake()
        elif isinstance(message, Ping):
            self._send(Pong(message.seq, message.payload))
        elif isinstance(message, Goodbye):
            raise _Stop
        elif isinstance(message, Error) and message.id is None:
            print(f"spear agent: node reported {message.code}: {message.message}", file=sys.stderr)
            raise _Stop

    def _start_call(self, request: Request) -> None:
        params = request.params if isinstance(request.params, dict) else {}
        name = params.get("function")
        if request.method != "execute" or not isinstance(name, str):
            self._send(Error(request.id, ErrorCode.NOT_FOUND.value, f"agent has no method {request.method!r}"))
            return
        fn = self.functions.get(name)
        if fn is None:
            known = ", ".join(sorted(self.functions)) or "none"
            self._send(
                Error(request.id, ErrorCode.NOT_FOUND.value, f"function {name!r} is not registered (has: {known})")
            )
            return
        state = _CallState(
            request.id,
            request.window,
            {key: params.get(key) for key in ("execution_id", "environment", "headers")},
        )
        with self._calls_lock:
            self._calls[request.id] = state
        args = params.get("params")
        if _is_async(fn):
            import asyncio

            state.future = asyncio.run_coroutine_threadsafe(self._run_async(fn, args, state), self._loop)
        else:
            self._submit(fn, args, state)

    def _cancel(self, message: Cancel) -> None:
        with self._calls_lock:
            state = self._calls.get(message.id)
        if state is None:
            return
        with state.cond:
            state.cancelled = True
            state.cond.notify_all()
        if state.future is not None:
            state.future.cancel()  # the coroutine's task is cancelled; it answers when it ends
        else:
            # A thread cannot be interrupted: answer now, abandon its eventual result.
            self._finish(state, Error(state.id, ErrorCode.CANCELLED.value, message.reason or "cancelled"))

    def _finish(self, state: _CallState, message: Message) -> None:
        """Send the one terminal answer of *state* (later ones are dropped)."""
        with state.cond:
            if state.answered:
                return
            state.answered = True
            state.cond.notify_all()
        with self._calls_lock:
            self._calls.pop(state.id, None)
        try:
            self._send(message)
        except ProtocolError as exc:
            self._send(Error(state.id, ErrorCode.FUNCTION_ERROR.value, f"result cannot be sent: {exc.message}"))

    def _result(self, state: _CallState, value: Any) -> Message:
        envelope = {"value": value, "logs": state.logs}
        if state.stream:
            return StreamEnd(state.id, state.sent, envelope)
        return Response(state.id, envelope)

    def _failure(self, state: _CallState, exc: BaseException) -> Error:
        import traceback

        return Error(
            state.id,
            ErrorCode.FUNCTION_ERROR.value,
            f"{type(exc).__name__}: {exc}",
            {"type": type(exc).__name__, "traceback": traceback.format_exc(), "logs": state.logs},
        )

    # -- threads -------------------------------------------------------------------
    def _submit(self, fn: Callable[..., Any], args: Any, state: _CallState) -> None:
        with self._pool_lock:
            if self._idle_workers == 0 and self._workers < self.max_workers:
                self._workers += 1
                threading.Thread(target=self._worker, daemon=True).start()
            else:
                self._idle_workers -= 1
        self._jobs.put((lambda: _call(fn, args), state))

    def _worker(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            work, state = job
            self._run_sync(work, state)
            with self._pool_lock:
                self._idle_workers += 1

    def _run_sync(self, work: Callable[[], Any], state: _CallState) -> None:
        token = _current.set(state)
        try:
            value = work()
            if isinstance(value, types.GeneratorType):
                value = self._drain_generator(value, state)
            message: Message = self._result(state, value)
        except _Abandoned:
            return
        except BaseException as exc:
            message = self._failure(state, exc)
        finally:
            _current.reset(token)
        self._finish(state, message)

    def _drain_generator(self, generator: Any, state: _CallState) -> Any:
        if not state.stream:
            return list(generator)  # a generator called in unary mode: collect it
        try:
            while True:
                item = next(generator)
                self._wait_credit(state)
                self._send_item(state, item)
        except StopIteration as stop:
            return stop.value
        finally:
            generator.close()

    def _send_item(self, state: _CallState, item: Any) -> None:
        try:
            self._send(StreamItem(state.id, state.sent, item))
        except ProtocolError as exc:  # becomes the stream's terminal FUNCTION_ERROR
            raise ValueError(f"stream item {state.sent} cannot be sent: {exc.message}") from None
        state.sent += 1

    def _wait_credit(self, state: _CallState) -> None:
        with state.cond:
            while state.credit <= 0 and not state.cancelled and not state.answered:
                state.cond.wait()
            if state.cancelled or state.answered:
                raise _Abandoned
            state.credit -= 1

    # -- asyncio ---------------------------------------------------------------------
    def _ensure_loop(self) -> None:
        if self._loop is not None:
            return
        import asyncio

        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()

    async def _run_async(self, fn: Callable[..., Any], args: Any, state: _CallState) -> None:
        import asyncio

        _current.set(state)
        try:
            if _is_async_generator(fn):
                value = await self._drain_async_generator(_call(fn, args), state)
            else:
                value = await _call(fn, args)
            message: Message = self._result(state, value)
        except asyncio.CancelledError:
            message = Error(state.id, ErrorCode.CANCELLED.value, "cancelled by the node")
        except Exception as exc:
            message = self._failure(state, exc)
        self._finish(state, message)

    async def _drain_async_generator(self, generator: Any, state: _CallState) -> Any:
        import asyncio

        items = []
        credit_arrived = asyncio.Event()
        loop = asyncio.get_running_loop()

        def wake() -> None:
            loop.call_soon_threadsafe(credit_arrived.set)

        state.wake = wake
        try:
            async for item in generator:
                if not state.stream:
                    items.append(item)
                    continue
                while True:  # wait for credit without blocking the loop
                    with state.cond:
                        if state.credit > 0:
                            state.credit -= 1
                            break
                        credit_arrived.clear()
                    await credit_arrived.wait()
                self._send_item(state, item)
        finally:
            await generator.aclose()
        return items if not state.stream else None


class _Abandoned(Exception):
    """The call was cancelled or answered while its thread was still running."""


def _call(fn: Callable[..., Any], args: Any) -> Any:
    if args is None:
        return fn()
    if isinstance(args, dict):
        return fn(**args)
    if isinstance(args, list):
        return fn(*args)
    return fn(args)


def _dial(address: str) -> socket.socket:
    if address.startswith("unix://"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(address[len("unix://") :])
        return sock
    if address.startswith("tcp://"):
        host, _, port = address[len("tcp://") :].rpartition(":")
        sock = socket.create_connection((host.strip("[]"), int(port)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise SystemExit(f"spear agent: unsupported SERVICE_ADDR {address!r}")

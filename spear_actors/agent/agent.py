"""The :class:`Agent`: registered functions, served to the node over an :class:`AgentLink`."""

from __future__ import annotations

import os
import sys
import threading
import time
import types
from _queue import SimpleQueue

from ..errors import ErrorCode, SpearError
from ..protocol.core import MAX_HELLO_SIZE, CancelReceived, CreditReceived, Event, ProtocolCore, RequestReceived
from ..protocol.messages import PROTOCOL_VERSION, Cancel, Hello, encode_message
from .calls import CallState, current
from .link import AgentLink, dial

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing, inspect, queue and traceback stay out of the cold start
    from collections.abc import Callable
    from typing import Any, TypeVar

    F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["Agent"]

_WATCH_PERIOD = 0.002  # an inline call running over 2-4 ms hands reading over
_WATCH_QUIET_PERIODS = 500  # about 1 s without inline calls: the watchdog sleeps
_IDLE_RECHECK = 5.0

_CO_COROUTINE = 0x80
_CO_ASYNC_GENERATOR = 0x200


def _is_async(fn: Callable[..., Any]) -> bool:
    """True for ``async def`` functions and async generators (inspect, without inspect)."""
    code = getattr(fn, "__code__", None)
    return code is not None and bool(code.co_flags & (_CO_COROUTINE | _CO_ASYNC_GENERATOR))


def _is_async_generator(fn: Callable[..., Any]) -> bool:
    code = getattr(fn, "__code__", None)
    return code is not None and bool(code.co_flags & _CO_ASYNC_GENERATOR)


class _Abandoned(Exception):
    """The call was cancelled or answered while its thread was still running."""


class Agent:
    """A set of functions served to a node."""

    def __init__(self, name: str | None = None, *, max_workers: int = 64) -> None:
        self.name = name or os.path.basename(sys.argv[0] or "agent")
        self.max_workers = max_workers
        self.functions: dict[str, Callable[..., Any]] = {}
        self._async: set[str] = set()  # names of the coroutine / async generator functions
        self._link: AgentLink | None = None
        self._calls: dict[int, CallState] = {}  # added by the reader; else under the link's lock
        self._jobs: SimpleQueue[tuple[Callable[..., Any], CallState] | None] = SimpleQueue()
        self._idle_workers = 0
        self._workers = 0
        self._pool_lock = threading.Lock()
        self._loop: Any = None
        # Calls run on the reader thread itself (see _run_inline):
        self._inline: CallState | None = None  # the one running now, if any
        self._inline_count = 0  # inline calls started so far: the watchdog's clock
        self._handed_over = 0  # threads still running a call after handing reading over
        self._slow: set[str] = set()  # functions that once ran too long to run inline
        self._watchdog: threading.Condition | None = None
        self._watchdog_sleeping = False

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
            self._async.add(name)
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
        link = AgentLink(dial(address))
        link.handshake(self._hello(secret))
        self._link = link
        link.serve(self._on_event)
        with link.lock:  # what is still running is abandoned: wake generators waiting for credit
            for state in self._calls.values():
                state.cancelled = True
            link.changed.notify_all()

    def _hello(self, secret: str) -> Hello:
        """The hello: it must fit the node's pre-authentication limit (8 KiB), so the
        list of functions (informational) is left out when it would not."""
        meta: dict[str, Any] = {"functions": sorted(self.functions), "pid": os.getpid(), "sdk": "python"}
        hello = Hello(PROTOCOL_VERSION, "agent", secret, os.environ.get("SPEAR_INSTANCE_ID"), meta)
        if len(encode_message(hello)) > MAX_HELLO_SIZE - 64:  # room for max_frame_size
            meta["functions"] = []
            meta["function_count"] = len(self.functions)
        return hello

    def _on_event(self, event: Event) -> None:
        if type(event) is RequestReceived:
            assert isinstance(event, RequestReceived)
            self._start_call(event)
        elif type(event) is CancelReceived:
            assert isinstance(event, CancelReceived)
            self._cancel(Cancel(event.id, event.reason))
        elif type(event) is CreditReceived:
            assert isinstance(event, CreditReceived)
            link = self._link
            assert link is not None
            with link.lock:
                state = self._calls.get(event.id)
                link.changed.notify_all()
            if state is not None and state.wake is not None:
                state.wake()

    def _start_call(self, request: RequestReceived) -> None:
        link = self._link
        assert link is not None
        params = request.params if isinstance(request.params, dict) else {}
        name = params.get("function")
        if request.method != "execute" or not isinstance(name, str):
            error = SpearError(ErrorCode.NOT_FOUND, f"agent has no method {request.method!r}")
            link.send(lambda core: core.fail(request.id, error))
            return
        fn = self.functions.get(name)
        if fn is None:
            known = ", ".join(sorted(self.functions)) or "none"
            error = SpearError(ErrorCode.NOT_FOUND, f"function {name!r} is not registered (has: {known})")
            link.send(lambda core: core.fail(request.id, error))
            return
        state = CallState(request.id, request.window is not None, params)
        # Without the lock: only the reader adds, and a dict's one assignment is
        # atomic; the lock orders what others do with an entry (answer, cancel).
        self._calls[request.id] = state
        args = params.get("params")
        if name in self._async:
            import asyncio

            state.future = asyncio.run_coroutine_threadsafe(self._run_async(fn, args, state), self._loop)
        elif state.stream or name in self._slow or self._handed_over >= self.max_workers:
            self._submit(fn, args, state)
        else:
            self._run_inline(name, fn, args, state)

    def _cancel(self, message: Cancel) -> None:
        """The node cancelled a call: a coroutine is cancelled (it answers when it
        ends); a thread cannot be interrupted, so the call is answered CANCELLED now
        and the thread's eventual result is dropped (the core answers once)."""
        link = self._link
        assert link is not None
        with link.lock:
            state = self._calls.get(message.id)
            if state is None:
                return
            state.cancelled = True
            link.changed.notify_all()
        if state.future is not None:
            state.future.cancel()
        else:
            self._finish(state, SpearError(ErrorCode.CANCELLED, message.reason or "cancelled"))

    def _finish(self, state: CallState, outcome: Any) -> None:
        """Send the one terminal answer of *state*: a :class:`SpearError`, or the
        value (later answers are dropped by the core)."""
        link = self._link
        assert link is not None
        link.send(lambda core: self._answer(core, state, outcome))

    def _answer(self, core: ProtocolCore, state: CallState, outcome: Any) -> bytes | None:
        """The body of *state*'s terminal answer (None: answered already); call under
        the link's lock."""
        self._calls.pop(state.id, None)
        if isinstance(outcome, SpearError):
            return core.fail(state.id, outcome)
        try:
            return core.respond(state.id, {"value": outcome, "logs": state.logs})
        except SpearError as exc:
            error = SpearError(ErrorCode.FUNCTION_ERROR, f"result cannot be sent: {exc.message}")
            return core.fail(state.id, error)

    def _failure(self, state: CallState, exc: BaseException) -> SpearError:
        import traceback

        return SpearError(
            ErrorCode.FUNCTION_ERROR,
            f"{type(exc).__name__}: {exc}",
            {"type": type(exc).__name__, "traceback": traceback.format_exc(), "logs": state.logs},
        )

    # -- on the reader thread ------------------------------------------------------
    def _run_inline(self, name: str, fn: Callable[..., Any], args: Any, state: CallState) -> None:
        """Run a plain function on the reader thread: no hand-off to a worker, the
        common case of a short function. A watchdog thread checks every
        ``_WATCH_PERIOD``: if the same inline call is still running, it starts a
        new reader (so cancels and pings are read) and marks the function slow,
        whose later calls go to the worker threads; this thread then finishes the
        call like a worker and leaves (:meth:`AgentLink.hand_over_reading`).

        What :meth:`_run_sync` and :meth:`_finish` do for a worker is done here in
        one piece, with the answer and the inline bookkeeping under one lock round:
        this is the SDK's cost per call."""
        link = self._link
        assert link is not None and link.core is not None
        self._inline = state
        self._inline_count += 1
        if self._watchdog_sleeping or self._watchdog is None:
            self._wake_watchdog()
        token = current.set(state)
        try:
            outcome = fn(**args) if type(args) is dict else _call(fn, args)
            if type(outcome) is types.GeneratorType:  # a generator called in unary mode
                outcome = list(outcome)
        except BaseException as exc:
            outcome = self._failure(state, exc)
        finally:
            current.reset(token)
        with link.lock:
            if self._inline is state:
                self._inline = None
            else:  # handed over: this thread is a worker that leaves now
                self._slow.add(name)
                self._handed_over -= 1
            link.enqueue(self._answer(link.core, state, outcome))

    def _wake_watchdog(self) -> None:
        if self._watchdog is None:
            self._watchdog = threading.Condition(threading.Lock())
            threading.Thread(target=self._watch_inline, name="spear-watchdog", daemon=True).start()
            return
        with self._watchdog:
            self._watchdog.notify()

    def _watch_inline(self) -> None:
        link = self._link
        watchdog = self._watchdog
        assert link is not None and watchdog is not None
        seen = -1
        quiet = 0  # periods without a new inline call
        while not link.closed:
            time.sleep(_WATCH_PERIOD)
            with link.lock:
                count = self._inline_count
                state = self._inline
                if state is not None and count == seen:  # the same call, a whole period
                    self._inline = None
                    self._handed_over += 1
                    link.hand_over_reading()
            quiet = quiet + 1 if count == seen else 0
            seen = count
            if quiet >= _WATCH_QUIET_PERIODS:  # idle: sleep until the next inline call
                with watchdog:
                    self._watchdog_sleeping = True
                    if self._inline_count == seen and not link.closed:
                        watchdog.wait(_IDLE_RECHECK)
                    self._watchdog_sleeping = False
                quiet = 0

    # -- threads -------------------------------------------------------------------
    def _submit(self, fn: Callable[..., Any], args: Any, state: CallState) -> None:
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

    def _run_sync(self, work: Callable[[], Any], state: CallState) -> None:
        token = current.set(state)
        try:
            value = work()
            if isinstance(value, types.GeneratorType):
                value = self._drain_generator(value, state)
            outcome: Any = value
        except _Abandoned:
            return
        except BaseException as exc:
            outcome = self._failure(state, exc)
        finally:
            current.reset(token)
        self._finish(state, outcome)

    def _drain_generator(self, generator: Any, state: CallState) -> Any:
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

    def _send_item(self, state: CallState, item: Any) -> None:
        link = self._link
        assert link is not None
        try:
            link.send_waiting(lambda core: core.send_item(state.id, item))
        except SpearError as exc:  # becomes the stream's terminal FUNCTION_ERROR
            raise ValueError(f"stream item cannot be sent: {exc.message}") from None

    def _wait_credit(self, state: CallState) -> None:
        """Wait until the node grants credit for one more item (the core counts it)."""
        link = self._link
        assert link is not None and link.core is not None
        core = link.core
        with link.lock:
            while core.credit(state.id) <= 0 and not state.cancelled and not link.closed:
                if state.id not in core.serving:
                    break
                link.changed.wait()
            if state.cancelled or link.closed or state.id not in core.serving:
                raise _Abandoned

    # -- asyncio ---------------------------------------------------------------------
    def _ensure_loop(self) -> None:
        if self._loop is not None:
            return
        import asyncio

        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()

    async def _run_async(self, fn: Callable[..., Any], args: Any, state: CallState) -> None:
        import asyncio

        current.set(state)
        try:
            if _is_async_generator(fn):
                outcome: Any = await self._drain_async_generator(_call(fn, args), state)
            else:
                outcome = await _call(fn, args)
        except asyncio.CancelledError:
            outcome = SpearError(ErrorCode.CANCELLED, "cancelled by the node")
        except Exception as exc:
            outcome = self._failure(state, exc)
        self._finish(state, outcome)

    async def _drain_async_generator(self, generator: Any, state: CallState) -> Any:
        import asyncio

        link = self._link
        assert link is not None and link.core is not None
        core = link.core
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
                    with link.lock:
                        if core.credit(state.id) > 0 or state.id not in core.serving:
                            break
                        credit_arrived.clear()
                    await credit_arrived.wait()
                self._send_item(state, item)
        finally:
            await generator.aclose()
        return items if not state.stream else None


def _call(fn: Callable[..., Any], args: Any) -> Any:
    if args is None:
        return fn()
    if isinstance(args, dict):
        return fn(**args)
    if isinstance(args, list):
        return fn(*args)
    return fn(args)

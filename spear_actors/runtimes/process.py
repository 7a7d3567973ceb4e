"""Process runtime: each instance is an OS process whose agent dials back.

The node listens for agents (a unix socket by default). For each instance it
starts the artifact's command in its own process group with ``SERVICE_ADDR`` and a
fresh ``SECRET`` in the environment; the agent connects, proves the secret in its
hello, and only then is the instance READY. Executions travel as ``execute``
requests on that connection; stopping the instance says goodbye, then sends
SIGTERM to the group, then SIGKILL after a grace period, and reaps the exit.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import math
import os
import secrets
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, Final, Protocol

import trio

from .._nursery import background_nursery
from ..errors import ErrorCode, SpearError
from ..metrics.events import events
from ..protocol.connection import Connection, ConnectionConfig
from ..protocol.framing import AGENT_LINK_MAX_FRAME_SIZE
from ..protocol.handshake import accept_connection
from ..protocol.messages import Hello, Welcome
from ..protocol.transports import Transport, parse_endpoint, serve_endpoint
from .agent_instance import AgentInstance
from .base import InstanceSpec, Runtime, RuntimeInstance
from .cgroup import InstanceCgroup, cgroup_problem
from .guardian import Guardian, kill_marked
from .output import LineSplitter
from .sandbox import Sandbox, agent_environment

__all__ = ["AgentDoor", "AgentServe", "ProcessRuntime", "agent_command"]

log = logging.getLogger(__name__)

_STDERR_TAIL_LINES: Final = 20
MAX_AGENT_HANDSHAKES: Final = 128
"""Agent connections at most between accept and welcome; more are closed at once."""


def agent_command(spec: InstanceSpec) -> tuple[list[str], str | None, dict[str, str]]:
    """The argv, working directory and extra environment for *spec*'s agent.

    ``config.command`` (a string or list) and ``config.args`` name the program; a
    command relative to an unpacked artifact directory is resolved inside it.
    Without a command, a ``.py`` artifact runs with the node's own Python.
    """
    config = spec.config
    command = config.get("command")
    args = config.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise SpearError(ErrorCode.INVALID_ARGUMENT, "artifact_spec.config.args must be a list of strings")
    path = spec.artifact_path
    argv: list[str]
    if isinstance(command, str):
        argv = shlex.split(command)
    elif isinstance(command, list) and command and all(isinstance(c, str) for c in command):
        argv = list(command)
    elif command is None and path is not None and path.suffix == ".py":
        argv = [sys.executable, str(path)]
    elif command is None and path is not None and path.is_file() and os.access(path, os.X_OK):
        argv = [str(path)]
    else:
        raise SpearError(
            ErrorCode.INVALID_ARGUMENT,
            "process artifact needs artifact_spec.config.command (or a .py / executable location)",
        )
    if path is not None and path.is_dir() and not os.path.isabs(argv[0]) and (path / argv[0]).exists():
        argv[0] = str(path / argv[0])
    cwd = config.get("working_directory")
    if cwd is not None and not isinstance(cwd, str):
        raise SpearError(ErrorCode.INVALID_ARGUMENT, "artifact_spec.config.working_directory must be a string")
    if cwd is None and path is not None:
        cwd = str(path if path.is_dir() else path.parent)
    env = config.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise SpearError(ErrorCode.INVALID_ARGUMENT, "artifact_spec.config.env must map strings to strings")
    return argv + args, cwd, dict(env)


AgentServe = Callable[[Connection], Awaitable[None]]
"""Serves one authenticated agent connection for its whole life."""


class AgentDoor(Protocol):
    """A way in to the agent listener for agents the node did not spawn."""

    def admit(self, digest: bytes, hello: Hello) -> AgentServe | None:
        """None: *digest* (sha256 of the hello's secret) is not this door's; else what
        serves the connection once welcomed. Raises UNAUTHENTICATED to refuse it."""


@dataclasses.dataclass(eq=False)
class _Arrival:
    """Where a dialing-back agent meets the instance that spawned it."""

    instance_id: str
    changed: trio.Event = dataclasses.field(default_factory=trio.Event)
    """Set when the agent has connected or the process has exited, whichever is first."""
    connection: Connection | None = None


class ProcessRuntime(Runtime):
    """Starts agent processes and serves their dial-back connections."""

    kind = "process"

    def __init__(
        self,
        agent_listen: str,
        *,
        start_timeout: float = 10.0,
        stop_grace: float = 2.0,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 5.0,
        cancel_grace: float = 2.0,
        node_id: str = "node",
        sandbox: Sandbox | None = None,
    ) -> None:
        self.agent_listen = agent_listen
        self.sandbox = sandbox or Sandbox()
        """How agent processes are confined (environment, limits, user, output caps)."""
        self._guardian = Guardian()
        self._cgroups: Path | None = None
        """Where instance cgroups are made, once checked usable (see :mod:`.cgroup`)."""
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self.cancel_grace = cancel_grace
        self.node_id = node_id
        self._connection_config = ConnectionConfig(
            heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout,
            handshake_timeout=start_timeout,
            max_frame_size=AGENT_LINK_MAX_FRAME_SIZE,
        )
        # sha256(secret) → arrival; looked up by digest so no secret is compared by hand.
        self._arrivals: dict[bytes, _Arrival] = {}
        self._greeting = 0
        """Agent connections that have not finished their handshake."""
        self._flood_logged = -math.inf
        self.doors: list[AgentDoor] = []
        """Other ways in for agents the node did not spawn (the external runtime)."""
        self._address: str | None = None

    @property
    def address(self) -> str:
        """The bound agent endpoint (SERVICE_ADDR); valid once :meth:`run` has started."""
        if self._address is None:
            raise SpearError(ErrorCode.UNAVAILABLE, "process runtime is not running")
        return self._address

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the agent listener until cancelled."""
        parse_endpoint(self.agent_listen)  # fail early on a bad URL
        if self.sandbox.cgroup_parent is not None:
            parent = Path(self.sandbox.cgroup_parent)
            problem = await trio.to_thread.run_sync(cgroup_problem, parent)
            if problem is None:
                self._cgroups = parent
            else:
                log.warning("agent cgroups disabled: %s (rlimits and process groups still apply)", problem)
        try:
            async with trio.open_nursery() as nursery:
                endpoint = await nursery.start(
                    partial(serve_endpoint, max_frame_size=AGENT_LINK_MAX_FRAME_SIZE),
                    self.agent_listen,
                    self._serve_agent,
                )
                self._address = str(endpoint)
                if self.sandbox.user is not None and endpoint.scheme == "unix":
                    _open_to_other_users(endpoint.path)
                task_status.started()
        finally:
            await self._guardian.aclose()

    async def _authenticate(self, hello: Hello) -> _Arrival | AgentServe:
        digest = hashlib.sha256((hello.auth or "").encode()).digest()
        arrival = self._arrivals.get(digest)
        if arrival is None:
            for door in self.doors:
                serve = door.admit(digest, hello)
                if serve is not None:
                    return serve
        if arrival is None or arrival.connection is not None:
            log.warning("agent %r rejected: unknown or reused secret", hello.peer_id)
            raise SpearError(ErrorCode.UNAUTHENTICATED, "unknown or already used agent secret")
        return arrival

    async def _serve_agent(self, transport: Transport) -> None:
        if self._greeting >= MAX_AGENT_HANDSHAKES:
            # A flood of connections that never say hello (the listener may face a
            # network, for external agents): closed at once, not held for the timeout.
            now = trio.current_time()
            if now - self._flood_logged >= 10:
                self._flood_logged = now
                log.warning("agent listener: %d handshakes in progress; refusing more", self._greeting)
            await transport.aclose()
            return
        self._greeting += 1
        greeting = True
        try:
            async with accept_connection(
                transport,
                authenticator=self._authenticate,
                config=self._connection_config,
                welcome=Welcome(role="node", peer_id=self.node_id),
            ) as connection:
                self._greeting -= 1
                greeting = False
                arrival = connection.identity
                if not isinstance(arrival, _Arrival):  # came in through a door
                    await arrival(connection)
                    return
                arrival.connection = connection
                arrival.changed.set()
                await connection.wait_closed()
        except SpearError as exc:
            log.info("agent connection on %s refused or failed: %s", transport.description, exc)
        finally:
            if greeting:
                self._greeting -= 1

    @asynccontextmanager
    async def open_instance(self, spec: InstanceSpec) -> AsyncIterator[RuntimeInstance]:
        argv, cwd, extra_env = agent_command(spec)
        secret = secrets.token_urlsafe(32)
        digest = hashlib.sha256(secret.encode()).digest()
        arrival = _Arrival(spec.instance_id)
        env = {
            **agent_environment(self.sandbox, extra_env, os.environ),
            **dict(self._guardian.environment()),
            "SERVICE_ADDR": self.address,
            "SECRET": secret,
            "SPEAR_INSTANCE_ID": spec.instance_id,
            "SPEAR_TASK_ID": spec.task_id,
        }
        self._arrivals[digest] = arrival
        started = trio.current_time()
        recorder = events()
        context = {"task_id": spec.task_id, "task_name": spec.task_name, "instance_id": spec.instance_id}
        stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
        cgroup = None if self._cgroups is None else InstanceCgroup(self._cgroups, spec.instance_id)
        try:
            if cgroup is not None:
                box = self.sandbox
                await trio.to_thread.run_sync(cgroup.create, box.cgroup_memory_bytes, box.cgroup_cpus, box.cgroup_pids)
            ids = self.sandbox.user_ids()
            process = await trio.lowlevel.open_process(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                # The child joins its cgroup itself, before exec, unless it switches
                # users first (Popen runs preexec_fn after that): then the node moves
                # it right after the spawn.
                preexec_fn=self.sandbox.preexec(None if cgroup is None or ids is not None else cgroup.joiner()),
                user=None if ids is None else ids[0],
                group=None if ids is None else ids[1],
                extra_groups=None if ids is None else [],
            )
        except (OSError, KeyError, subprocess.SubprocessError) as exc:
            del self._arrivals[digest]
            if cgroup is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(cgroup.kill_all)
            if recorder is not None:
                recorder.instance_failed("process", spec.task_id, "spawn_failed")
            raise SpearError(ErrorCode.INSTANCE_FAILED, f"cannot start {argv[0]!r}: {exc}") from None
        if cgroup is not None and ids is not None:
            try:
                await trio.to_thread.run_sync(cgroup.add, process.pid)
            except OSError as exc:
                log.warning("cannot move agent %d into %s: %s", process.pid, cgroup.path, exc, extra=context)
        instance = ProcessInstance(
            spec.instance_id, process, stderr_tail, self.cancel_grace, self.sandbox, task_id=spec.task_id
        )
        try:
            async with background_nursery() as nursery:
                agent_log = logging.getLogger(f"spear_actors.agent.{spec.instance_id}")
                assert process.stdout is not None and process.stderr is not None
                # In the background: the agent's start does not wait for the guardian
                # (started with the first agent) to come up.
                nursery.start_soon(self._guardian.register, process.pid)
                line_cap = self.sandbox.max_line_bytes
                nursery.start_soon(_pump, process.stdout, agent_log, None, line_cap, context)
                nursery.start_soon(_pump, process.stderr, agent_log, stderr_tail, line_cap, context)
                nursery.start_soon(instance._reap, arrival.changed)
                with trio.move_on_after(self.start_timeout):
                    await arrival.changed.wait()
                if arrival.connection is None or process.returncode is not None:
                    error = instance._start_error(self.start_timeout)
                    if recorder is not None:
                        reason = "start_timeout" if process.returncode is None else "exited_before_ready"
                        recorder.instance_failed("process", spec.task_id, reason)
                    log.info("agent %s did not start: %s", spec.instance_id, error.message, extra=context)
                    instance._stopping = True  # counted above, not again as it is stopped
                    raise error
                if recorder is not None:
                    recorder.instance_started("process", spec.task_id, trio.current_time() - started)
                instance._attach(arrival.connection)
                nursery.start_soon(instance._watch_connection)
                yield instance
        finally:
            self._arrivals.pop(digest, None)
            with trio.CancelScope(shield=True):
                await instance._stop(self.stop_grace)
                # Descendants that left the agent's process group but kept its environment.
                await trio.to_thread.run_sync(kill_marked, "SPEAR_INSTANCE_ID", spec.instance_id)
                if cgroup is not None:  # and every descendant, whatever it did to escape
                    try:
                        await trio.to_thread.run_sync(cgroup.kill_all)
                    except OSError as exc:
                        log.warning("cannot remove the cgroup of %s: %s", spec.instance_id, exc, extra=context)
                await self._guardian.unregister(process.pid)
                # The pipes are closed now, not whenever the garbage collector
                # gets to the process object (forced kills leaked them: issue 12).
                for pipe in (process.stdout, process.stderr):
                    if pipe is not None:
                        await pipe.aclose()


class ProcessInstance(AgentInstance):
    """An agent process and its connection."""

    def __init__(
        self,
        instance_id: str,
        process: trio.Process,
        stderr_tail: collections.deque[str],
        cancel_grace: float,
        sandbox: Sandbox | None = None,
        *,
        task_id: str = "",
    ) -> None:
        super().__init__(instance_id, cancel_grace, sandbox, task_id=task_id)
        self.process = process
        self._stderr_tail = stderr_tail

    def describe(self) -> dict[str, Any]:
        return {"pid": self.process.pid, "returncode": self.process.returncode}

    def _failure_details(self) -> dict[str, Any]:
        return {"stderr_tail": "\n".join(self._stderr_tail)}

    async def _reap(self, changed: trio.Event) -> None:
        code = await self.process.wait()
        self._fail(f"agent process exited with code {code}", "exited")
        changed.set()

    def _start_error(self, timeout: float) -> SpearError:
        code = self.process.returncode
        why = (
            f"agent exited with code {code} before dialing back"
            if code is not None
            else f"agent did not dial back within {timeout:g}s"
        )
        tail = "\n".join(self._stderr_tail)
        message = f"{why}; stderr tail:\n{tail}" if tail else why
        return SpearError(ErrorCode.INSTANCE_FAILED, message, {"stderr_tail": tail, "exit_code": code})

    async def _stop(self, grace: float) -> None:
        """Goodbye, SIGTERM to the group, SIGKILL after *grace*, reap. Idempotent."""
        self._stopping = True
        if self._connection is not None and self.process.returncode is None:
            await self._connection.aclose("instance stopping")
        if self.process.returncode is None:
            _signal_group(self.process, signal.SIGTERM)
            with trio.move_on_after(grace):
                await self.process.wait()
        if self.process.returncode is None:
            _signal_group(self.process, signal.SIGKILL)
            await self.process.wait()
        # The leader is gone; whatever it left in its group (a child that ignored
        # SIGTERM, say) is killed too.
        _signal_group(self.process, signal.SIGKILL)


def _signal_group(process: trio.Process, sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _open_to_other_users(path: str) -> None:
    # An agent running as another user must reach the socket; the secret, not the
    # file mode, is what authenticates it.
    os.chmod(os.path.dirname(path), 0o711)
    os.chmod(path, 0o666)


async def _pump(
    stream: trio.abc.ReceiveStream,
    logger: logging.Logger,
    tail: collections.deque[str] | None,
    max_line: int,
    context: dict[str, str] | None = None,
) -> None:
    """Copy an agent's output to the node's log, line by line, keeping a tail.

    Linear in the bytes read: each byte is scanned once, a line is cut at *max_line*
    bytes (marked truncated) and the node log gets a bounded number of lines per
    second (the rest are counted, not formatted).
    """
    prefix = "stderr: " if tail is not None else ""
    splitter = LineSplitter(max_line)

    def emit(line: str) -> None:
        if tail is not None:
            tail.append(line)
        logger.info("%s%s", prefix, line, extra=context)

    try:
        while True:
            data = await stream.receive_some(65536)
            if not data:
                break
            for line in splitter.feed(bytes(data), trio.current_time()):
                emit(line)
            await trio.lowlevel.checkpoint()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    for line in splitter.finish():
        emit(line)
